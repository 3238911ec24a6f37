package dev.loragen.core

import org.junit.Assert.assertEquals
import org.junit.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * One precise defect per check of docs/bundle-format.md, built from a valid golden bundle and
 * re-signed with the golden test key so that the check under test is the first to fail. With
 * `-Dloragen.dump=DIR` each case is written to DIR/<name>.bundle (+ cases.json) for the Python
 * cross-check in android_demo/core/tools/crosscheck.py.
 */
class VerifyErrorsTest {
    private val merged = Golden.bundle("executorch-merged")
    private val loraRaw = Golden.bundle("executorch-lora")
    private val art = Golden.artifact("executorch")
    private val tensors = BundleWriter.tensorsOf(merged)
    private val manifest = BundleWriter.manifestOf(merged)

    private fun m(): JsonObject = BundleWriter.copy(manifest) as JsonObject
    private fun JsonObject.o(k: String) = this[k] as JsonObject
    private val first = "model.layers.0.mlp.down_proj.weight"

    private val dumped = LinkedHashMap<String, String>()

    private fun case(name: String, code: String?, raw: ByteArray, key: Boolean = true, artifact: Artifact = art, requireSig: Boolean = true) {
        Golden.dump?.let { d ->
            File(d, "$name.bundle").writeBytes(raw)
            val which = if (artifact === art) "executorch" else "noslots"
            dumped[name] = "${code ?: "valid"};$key;$requireSig;$which"
        }
        val got = codeOf { BundleVerifier.verify(ByteSource.of(raw), artifact, if (key) Golden.publicKey else null, requireSig) }
        assertEquals("case $name", code, got)
    }

    private fun rebuild(
        man: Any? = m(), ts: List<BundleWriter.T> = tensors, sign: Boolean = true, headerText: ((String) -> String)? = null,
        metaExtra: Map<String, Any?> = emptyMap(), spec: Map<String, Any?> = emptyMap(),
    ) = BundleWriter.assemble(ts, man, sign, metaExtra, headerText, spec)

    private fun spec(dtype: Any?, shape: Any?, offs: Any?, extra: Map<String, Any?> = emptyMap()) =
        JsonObject(LinkedHashMap<String, Any?>().apply { put("dtype", dtype); put("shape", shape); put("data_offsets", offs); putAll(extra) })

    @Test
    fun rebuiltValidBundleIsByteIdenticalToPython() {
        // the test writer reproduces Python's serializer exactly (same bytes, same signature)
        assertEquals(sha256Hex(merged), sha256Hex(rebuild()))
        assertEquals(sha256Hex(loraRaw), sha256Hex(BundleWriter.assemble(BundleWriter.tensorsOf(loraRaw), BundleWriter.manifestOf(loraRaw))))
        case("valid-rebuilt", null, rebuild())
    }

    @Test
    fun containerChecks() {
        val len = { n: Long -> ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(0, n).array() }
        case("empty", "truncated", ByteArray(0))
        case("seven-bytes", "truncated", ByteArray(7))
        case("zero-header", "header_json", len(0))
        case("huge-length", "header_length", len(-1L) + ByteArray(8)) // 2^64 - 1
        case("over-16mib", "header_length", len(16L * 1024 * 1024 + 8) + ByteArray(16 * 1024 * 1024 + 8) { ' '.code.toByte() })
        case("bad-utf8-continuation", "header_encoding", len(8) + "{\"a\":\u00e9}".toByteArray(Charsets.ISO_8859_1).copyOf(8))
        case("utf8-surrogate", "header_encoding", len(8) + byteArrayOf(0x22, 0xed.toByte(), 0xa0.toByte(), 0x80.toByte(), 0x22, 0x20, 0x20, 0x20))
        case("overlong-utf8", "header_encoding", len(8) + byteArrayOf(0x22, 0xc0.toByte(), 0xaf.toByte(), 0x22, 0x20, 0x20, 0x20, 0x20))
        case("header-array", "header_json", len(8) + "[]      ".toByteArray())
        case("header-not-json", "header_json", len(8) + "{\"a\":   ".toByteArray())
        case("nul-padding", "header_json", len(8) + "{}\u0000\u0000\u0000\u0000\u0000\u0000".toByteArray())
        case("nested-dup", "duplicate_name", rebuild(headerText = { it.replaceFirst("{\"dtype\"", "{\"dtype\":\"F32\",\"dtype\"") }))
    }

    @Test
    fun metadataAndSignatureField() {
        case("no-metadata", "metadata", rebuild(headerText = { it.replaceFirst("\"__metadata__\"", "\"__metadata_x\"") }))
        case("metadata-number", "metadata", rebuild(metaExtra = mapOf("other" to 1L)))
        case("sig-uppercase", "signature_field", rebuild(sign = false, headerText = { it.replace("\"${"0".repeat(128)}\"", "\"${"A".repeat(128)}\"") }))
        case("sig-short", "signature_field", rebuild(sign = false, headerText = { it.replace("\"${"0".repeat(128)}\"", "\"${"0".repeat(127)}\"") }))
        // JSON-equivalent spacing moves the needle: the signature field is no longer found verbatim
        val spaced = rebuild(sign = false, headerText = {
            it.replace("\"loragen.signature\":\"${"0".repeat(128)}\"", "\"loragen.signature\": \"${"ab".repeat(64)}\"")
        })
        case("sig-spaced", "signature_field", spaced)
        // a signed bundle is verified even when unsigned ones are admitted: without a key it is refused
        case("sig-spaced-nokey", "key_required", spaced, key = false, requireSig = false)
    }

    @Test
    fun manifestFormatVersion() {
        case("manifest-not-json", "manifest", rebuild(man = "{not json"))
        case("manifest-empty", "manifest", rebuild(man = ""))
        case("manifest-dup", "duplicate_name", rebuild(man = JsonValues.render(m()).replaceFirst("{", "{\"kind\":\"merged\",")))
        case("manifest-array", "format", rebuild(man = "[1]"))
        case("format-other", "format", rebuild(man = m().apply { map["format"] = "other" }))
        case("version-2", "version", rebuild(man = m().apply { map["format_version"] = 2L }))
        case("version-string", "version", rebuild(man = m().apply { map["format_version"] = "1" }))
        // exactly the JSON integer 1: not 1.0, not true
        case("version-float", "version", rebuild(man = m().apply { map["format_version"] = 1.0 }))
        case("version-true", "version", rebuild(man = m().apply { map["format_version"] = true }))
        case("manifest-huge-int", "manifest", rebuild(man = JsonValues.render(m()).replaceFirst("\"format_version\":1", "\"format_version\":" + "1".repeat(4301))))
        case("tensors-disagree", "manifest", rebuild(man = m().apply { o("tensors").map.remove(first) }))
        case("tensors-not-object", "manifest", rebuild(man = m().apply { map["tensors"] = listOf(1L) }))
    }

    @Test
    fun tensorHeaderAndOffsets() {
        val e = tensors.first { it.name == first }
        case("dtype-f64", "tensor_header", rebuild(spec = mapOf(first to spec("F64", e.shape, listOf(0L, 512L)))))
        case("shape-negative", "tensor_header", rebuild(spec = mapOf(first to spec("F32", listOf(-8L, -16L), listOf(0L, 512L)))))
        case("shape-float", "tensor_header", rebuild(spec = mapOf(first to spec("F32", listOf(8.0, 16L), listOf(0L, 512L)))))
        case("dtype-list", "tensor_header", rebuild(spec = mapOf(first to spec(listOf("F32"), e.shape, listOf(0L, 512L)))))
        case("dtype-object", "tensor_header", rebuild(spec = mapOf(first to spec(JsonObject(LinkedHashMap(mapOf("a" to 1L))), e.shape, listOf(0L, 512L)))))
        case("offsets-bool", "tensor_header", rebuild(spec = mapOf(first to spec("F32", e.shape, listOf(false, 512L)))))
        case("spec-extra-key", "tensor_header", rebuild(spec = mapOf(first to spec("F32", e.shape, listOf(0L, 512L), mapOf("x" to 1L)))))
        case("offsets-size-mismatch", "data_offsets", rebuild(spec = mapOf(first to spec("F32", listOf(8L, 8L), listOf(0L, 512L)))))
        case("offsets-huge", "data_offsets", rebuild(spec = mapOf(first to spec("F32", listOf(4611686018427387904L, 4L), listOf(0L, 512L)))))
        case("offsets-overlap", "data_offsets", rebuild(spec = mapOf(first to spec("F32", e.shape, listOf(512L, 1024L)))))
        val plusTail = rebuild() + ByteArray(8)
        case("trailing-bytes", "data_offsets", plusTail)
    }

    @Test
    fun signatureOutcomes() {
        case("no-key", "key_required", rebuild(), key = false)
        case("unsigned-with-key", "unsigned", rebuild(sign = false))
        case("unsigned-no-key-allowed", null, rebuild(sign = false), key = false, requireSig = false)
        val flipped = rebuild().also { it[it.size - 1] = (it[it.size - 1].toInt() xor 0x40).toByte() }
        case("flipped-last-byte", "bad_signature", flipped)
        // admitting unsigned bundles never admits a signed one without its key, nor a bad signature
        case("flipped-last-byte-nokey", "key_required", flipped, key = false, requireSig = false)
        case("flipped-last-byte-allow", "bad_signature", flipped, requireSig = false)
        val unsignedFlipped = rebuild(sign = false).also { it[it.size - 1] = (it[it.size - 1].toInt() xor 0x40).toByte() }
        case("unsigned-flipped-nokey-allowed", "digest", unsignedFlipped, key = false, requireSig = false)
    }

    @Test
    fun bindingChecks() {
        case("kind-delta", "kind", rebuild(man = m().apply { map["kind"] = "delta" }))
        case("kind-missing", "kind", rebuild(man = m().apply { map.remove("kind") }))
        case("backend-onnx", "backend", rebuild(man = m().apply { o("base").map["backend"] = "onnx" }))
        case("base-not-object", "backend", rebuild(man = m().apply { map["base"] = "x" }))
        case("fingerprint-other", "fingerprint", rebuild(man = m().apply { o("base").map["fingerprint"] = "0".repeat(64) }))
        val noSlots = Artifact(BundleWriter.copy(art.json) as JsonObject).also { it.json.map["swap_slots"] = listOf<Any?>() }
        case("artifact-without-slots", "slot", rebuild(), artifact = noSlots)
    }

    @Test
    fun tensorSetChecks() {
        val ts = tensors.filter { it.name != first }
        case("missing-tensor", "missing_tensor", rebuild(man = m().apply { o("tensors").map.remove(first) }, ts = ts))
        val extra = BundleWriter.T("zz.extra", "F32", listOf(2L), ByteArray(8))
        val withExtra = m().apply {
            o("tensors").map["zz.extra"] = JsonObject(LinkedHashMap<String, Any?>().apply {
                put("param", "zz.extra"); put("slot", JsonObject(LinkedHashMap())); put("dtype", "F32"); put("shape", listOf(2L))
                put("sha256", sha256Hex(ByteArray(8)))
            })
        }
        case("extra-tensor", "extra_tensor", rebuild(man = withExtra, ts = tensors + extra))
        // lora: factors of a module that has no slot are extra; a missing B is missing
        val lt = BundleWriter.tensorsOf(loraRaw)
        val lm = BundleWriter.manifestOf(loraRaw)
        val noB = BundleWriter.copy(lm) as JsonObject
        noB.o("tensors").map.remove("model.layers.0.mlp.up_proj.lora_B")
        case("lora-missing-b", "missing_tensor", BundleWriter.assemble(lt.filter { it.name != "model.layers.0.mlp.up_proj.lora_B" }, noB))
        val badScale = BundleWriter.copy(lm) as JsonObject
        badScale.o("lora").map["scale"] = 1.0
        case("lora-bad-scale", "manifest", BundleWriter.assemble(lt, badScale))
        for ((label, alpha, scale) in listOf(Triple("nan", Double.NaN, Double.NaN), Triple("inf", Double.POSITIVE_INFINITY, Double.POSITIVE_INFINITY),
            Triple("1e38", 1e38, 2.5e37), Triple("scale-2048", 8192.0, 2048.0))) {
            val bad = BundleWriter.copy(lm) as JsonObject
            bad.o("lora").map["alpha"] = alpha
            bad.o("lora").map["scale"] = scale
            case("lora-alpha-$label", "manifest", BundleWriter.assemble(lt, bad))
        }
        val rFloat = BundleWriter.copy(lm) as JsonObject
        rFloat.o("lora").map["r"] = 4.0
        case("lora-r-float", "manifest", BundleWriter.assemble(lt, rFloat))
        // a NaN and an out-of-bound factor value, digests updated and re-signed
        for ((label, value) in listOf("nan" to Float.NaN, "3e38" to 3e38f, "70000" to 70000f)) {
            val name = "model.layers.0.mlp.up_proj.lora_A"
            val ts = lt.map { t ->
                if (t.name != name) t else BundleWriter.T(t.name, t.dtype, t.shape, t.data.copyOf().also {
                    ByteBuffer.wrap(it).order(ByteOrder.LITTLE_ENDIAN).putFloat(4, value)
                })
            }
            val man = BundleWriter.copy(lm) as JsonObject
            man.o("tensors").o(name).map["sha256"] = sha256Hex(ts.first { it.name == name }.data)
            case("lora-factor-$label", "values", BundleWriter.assemble(ts, man))
        }
        val noLora = BundleWriter.copy(lm) as JsonObject
        noLora.map.remove("lora")
        case("lora-missing-entry", "manifest", BundleWriter.assemble(lt, noLora))
    }

    @Test
    fun slotDtypeShapeDigest() {
        case("param-list", "manifest", rebuild(man = m().apply { o("tensors").o(first).map["param"] = listOf(first) }))
        case("param-unknown", "slot", rebuild(man = m().apply { o("tensors").o(first).map["param"] = "model.nope.weight" }))
        case("slot-key-changed", "slot", rebuild(man = m().apply { o("tensors").o(first).o("slot").map["key"] = "f".repeat(64) }))
        case("slot-extra-field", "slot", rebuild(man = m().apply { o("tensors").o(first).o("slot").map["offset"] = 0L }))
        case("manifest-dtype-mismatch", "manifest", rebuild(man = m().apply { o("tensors").o(first).map["dtype"] = "F16" }))
        case("manifest-shape-mismatch", "manifest", rebuild(man = m().apply { o("tensors").o(first).map["shape"] = listOf(16L, 8L) }))
        // the same bytes declared F16 with twice the elements: consistent header and manifest, wrong dtype
        val asF16 = tensors.map { if (it.name == first) BundleWriter.T(it.name, "F16", listOf(8L, 32L), it.data) else it }
        case("dtype-f16", "dtype", rebuild(ts = asF16, man = m().apply { o("tensors").o(first).apply { map["dtype"] = "F16"; map["shape"] = listOf(8L, 32L) } }))
        val transposed = tensors.map { if (it.name == first) BundleWriter.T(it.name, "F32", listOf(16L, 8L), it.data) else it }
        case("shape-transposed", "shape", rebuild(ts = transposed, man = m().apply { o("tensors").o(first).map["shape"] = listOf(16L, 8L) }))
        case("digest-wrong", "digest", rebuild(man = m().apply { o("tensors").o(first).map["sha256"] = "0".repeat(64) }))
        case("digest-uppercase", "digest", rebuild(man = m().apply { o("tensors").o(first).apply { map["sha256"] = (map["sha256"] as String).uppercase() } }))
        writeCases()
    }

    private fun writeCases() {
        // each test method writes its own cases; cases.json accumulates across methods
        val d = Golden.dump ?: return
        val f = File(d, "cases.json")
        val all = LinkedHashMap<String, Any?>()
        if (f.isFile) all.putAll((Json.parse(f.readText()) as JsonObject).map)
        all.putAll(dumped)
        f.writeText(JsonValues.render(JsonObject(all)))
    }

    @org.junit.After
    fun flush() = writeCases()
}
