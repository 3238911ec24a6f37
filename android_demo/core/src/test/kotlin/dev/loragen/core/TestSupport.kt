package dev.loragen.core

import org.junit.Assert.assertEquals
import org.junit.Assert.fail
import org.junit.runner.JUnitCore
import org.junit.runner.Result
import org.junit.runner.notification.Failure
import org.junit.runner.notification.RunListener
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest
import kotlin.system.exitProcess

/** tests/golden/ of the repository (system property `loragen.golden`, set by run-tests.sh). */
object Golden {
    val dir: File by lazy {
        val p = System.getProperty("loragen.golden") ?: error("set -Dloragen.golden=<repo>/tests/golden")
        File(p).also { require(File(it, "expected.json").isFile) { "no expected.json in $it" } }
    }
    val expected: JsonObject by lazy { Json.parse(File(dir, "expected.json").readText()) as JsonObject }
    val bundles: JsonObject get() = expected.obj("bundles")!!
    val publicKey by lazy { Ed25519.publicKeyFromPem(File(dir, "keys/public_key.pem").readText()) }
    val otherKey by lazy { Ed25519.publicKeyFromPem(File(dir, "keys/other_public_key.pem").readText()) }
    val signingKey by lazy { Ed25519.privateKeyFromPem(File(dir, "keys/signing_key.pem").readText()) }

    fun bytes(rel: String): ByteArray = File(dir, rel).readBytes()
    fun bundle(name: String): ByteArray = bytes("bundles/$name.bundle")
    fun artifact(backend: String): Artifact = Artifact.read(File(dir, "artifacts/$backend.json"))
    fun artifactFor(name: String): Artifact = Artifact.read(File(dir, bundles.obj(name)!!.str("artifact")!!))
    fun safetensors(rel: String): SafetensorsFile = SafetensorsFile.read(ByteSource.open(File(dir, rel)))

    /** Optional dump directory (system property `loragen.dump`) for cross-checking with Python. */
    val dump: File? by lazy { System.getProperty("loragen.dump")?.let { File(it).apply { mkdirs() } } }
}

fun sha256Hex(b: ByteArray): String = Hex.encode(MessageDigest.getInstance("SHA-256").digest(b))

fun expectCode(code: String, block: () -> Unit) {
    try {
        block()
    } catch (e: BundleException) {
        assertEquals("error code (message: ${e.message})", code, e.code)
        return
    }
    fail("expected BundleException with code $code, nothing was thrown")
}

fun codeOf(block: () -> Unit): String? = try {
    block(); null
} catch (e: BundleException) {
    e.code
}

/**
 * Builds bundles the way Python's `format.serialize` does (tensors by element size then name,
 * compact header, space padding to 8, signature over the digest) so tests can make precise defects
 * and still sign them with the golden test key.
 */
object BundleWriter {
    class T(val name: String, val dtype: String, val shape: List<Long>, val data: ByteArray)

    fun tensorsOf(raw: ByteArray): List<T> {
        val f = SafetensorsFile.read(ByteSource.of(raw))
        return f.tensors.values.map { e ->
            val b = f.tensorBuffer(e.name)
            val a = ByteArray(b.remaining()); b.get(a)
            T(e.name, e.dtype.id, e.shape, a)
        }
    }

    fun manifestOf(raw: ByteArray): JsonObject = ParsedBundle.parse(ByteSource.of(raw)).manifest

    /** Deep copy of a parsed JSON value, with mutable maps. */
    fun copy(v: Any?): Any? = when (v) {
        is JsonObject -> JsonObject(LinkedHashMap<String, Any?>().apply { v.entries.forEach { put(it.key, copy(it.value)) } })
        is List<*> -> v.map { copy(it) }.toMutableList()
        else -> v
    }

    fun assemble(
        tensors: List<T>,
        manifest: Any?,
        sign: Boolean = true,
        metaExtra: Map<String, Any?> = emptyMap(),
        headerText: ((String) -> String)? = null,
        specOverride: Map<String, Any?> = emptyMap(),
    ): ByteArray {
        val meta = LinkedHashMap<String, Any?>()
        meta[BundleFormat.MANIFEST_KEY] = if (manifest is String) manifest else JsonValues.render(manifest)
        meta[BundleFormat.SIG_KEY] = BundleFormat.UNSIGNED
        meta.putAll(metaExtra)
        val order = tensors.sortedWith(compareBy<T>({ -(DType.of(it.dtype)?.size ?: 1) }, { it.name }))
        val header = LinkedHashMap<String, Any?>()
        header["__metadata__"] = JsonObject(LinkedHashMap(meta.toSortedMap()))
        var pos = 0L
        for (t in order) {
            val spec = LinkedHashMap<String, Any?>()
            spec["dtype"] = t.dtype
            spec["shape"] = t.shape
            spec["data_offsets"] = listOf(pos, pos + t.data.size)
            header[t.name] = specOverride[t.name] ?: JsonObject(spec)
            pos += t.data.size
        }
        var text = JsonValues.render(JsonObject(header))
        if (headerText != null) text = headerText(text)
        var hb = text.toByteArray(Charsets.UTF_8)
        if (hb.size % 8 != 0) hb += ByteArray(8 - hb.size % 8) { ' '.code.toByte() }
        val len = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(0, hb.size.toLong()).array()
        val raw = len + hb + order.fold(ByteArray(0)) { acc, t -> acc + t.data }
        if (!sign) return raw
        val needle = "\"${BundleFormat.SIG_KEY}\":\"${BundleFormat.UNSIGNED}\"".toByteArray()
        val at = ParsedBundle.indexOf(raw, needle, 8)
        require(at >= 0) { "no signature field to sign" }
        val sig = Hex.encode(Ed25519.sign(Golden.signingKey, MessageDigest.getInstance("SHA-256").digest(raw)))
        val start = at + needle.size - BundleFormat.SIG_HEX_LEN - 1
        sig.toByteArray().copyInto(raw, start)
        return raw
    }
}

/** Runs every test class with JUnit 4 and prints `N passed, M failed` as the last line. */
object TestMain {
    val CLASSES = listOf(
        Fp16Test::class.java, FmaTest::class.java, JsonTest::class.java, GoldenTest::class.java, VerifyErrorsTest::class.java,
        CorruptionTest::class.java, MergeTest::class.java, PtdTest::class.java, TokenizerTest::class.java, MutationTest::class.java,
        QuantTest::class.java, AdapterSlotsTest::class.java,
    )

    @JvmStatic
    fun main(args: Array<String>) {
        val core = JUnitCore()
        val started = System.nanoTime()
        core.addListener(object : RunListener() {
            override fun testFailure(failure: Failure) {
                System.out.println("FAIL ${failure.testHeader}: ${failure.message}")
                System.out.println(failure.trace.lines().take(12).joinToString("\n"))
            }
            override fun testAssumptionFailure(failure: Failure) {
                System.out.println("SKIPPED (counted as failure) ${failure.testHeader}: ${failure.message}")
            }
        })
        val r: Result = core.run(*CLASSES.toTypedArray())
        // never skip: ignored tests and failed assumptions count as failures
        val failed = r.failureCount + r.ignoreCount + r.assumptionFailureCount
        val run = r.runCount + r.ignoreCount
        System.out.printf("ran %d tests in %.1f s%n", run, (System.nanoTime() - started) / 1e9)
        println("${run - failed} passed, $failed failed")
        exitProcess(if (failed == 0 && run > 0) 0 else 1)
    }
}
