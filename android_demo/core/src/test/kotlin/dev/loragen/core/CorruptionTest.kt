package dev.loragen.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.Random

/**
 * Random damage to valid bundles (fixed seeds): every outcome is a [BundleException] with a
 * documented code, or a bundle that verifies with exactly the original tensors. Never another
 * exception, never different tensors.
 */
class CorruptionTest {
    private companion object {
        // the 28 key_required: flips that turn a '0' of the all-zero signature into another hex
        // digit, so the bundle now carries a signature, which needs a key; the 11 that verify
        // differ only outside the tensors (e.g. a digit of the creation time)
        val TALLY_WITHOUT_KEY = mapOf(
            "backend" to 4, "data_offsets" to 9, "digest" to 478, "duplicate_name" to 2, "fingerprint" to 20, "format" to 11,
            "header_encoding" to 235, "header_json" to 347, "header_length" to 2, "key_required" to 27, "kind" to 1,
            "manifest" to 210, "metadata" to 2, "signature_field" to 16, "slot" to 79, "tensor_header" to 39, "valid" to 11,
            "version" to 7,
        )
    }

    private val codes = ErrorCode.values().map { it.id }.toSet() - setOf("io", "artifact", "merge", "build", "encoding")

    private fun originalPlan(name: String, backend: String, key: Boolean): Map<String, String> {
        val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle(name)), Golden.artifact(backend), if (key) Golden.publicKey else null, requireSignature = key)
        return vb.parsed.tensors.keys.associateWith { vb.parsed.container.tensorSha256(it) }
    }

    /** Returns the outcome: an error code or "valid" (after checking the tensors are the original ones). */
    private fun outcome(raw: ByteArray, backend: String, key: Boolean, original: Map<String, String>): String {
        return try {
            val vb = BundleVerifier.verify(ByteSource.of(raw), Golden.artifact(backend), if (key) Golden.publicKey else null, requireSignature = key)
            val now = vb.parsed.tensors.keys.associateWith { vb.parsed.container.tensorSha256(it) }
            assertEquals("a damaged bundle verified with different tensors", original, now)
            "valid"
        } catch (e: BundleException) {
            assertTrue("undocumented code ${e.code}", e.code in codes)
            e.code
        } catch (e: Throwable) {
            fail("crash instead of a typed error: $e")
            throw e
        }
    }

    private fun fuzz(name: String, backend: String, seed: Long, rounds: Int, key: Boolean): Map<String, Int> {
        val good = Golden.bundle(name)
        val original = originalPlan(name, backend, key)
        val rnd = Random(seed)
        val tally = sortedMapOf<String, Int>()
        val dump = Golden.dump?.let { File(it, "fuzz-$name-$key").apply { mkdirs() } }
        for (i in 0 until rounds) {
            val raw = good.copyOf()
            val flips = 1 + rnd.nextInt(4)
            repeat(flips) {
                val at = rnd.nextInt(raw.size)
                raw[at] = (raw[at].toInt() xor (1 shl rnd.nextInt(8))).toByte()
            }
            val o = outcome(raw, backend, key, original)
            tally[o] = (tally[o] ?: 0) + 1
            if (dump != null) File(dump, "%04d-%s.bundle".format(i, o)).writeBytes(raw)
        }
        println("  fuzz $name key=$key: $tally")
        return tally
    }

    @Test
    fun bitFlipsWithKey() {
        val t = fuzz("executorch-merged", "executorch", seed = 20260101, rounds = 1500, key = true)
        assertEquals(1500, t.values.sum())
        assertEquals("signed bundles: no damaged copy may verify", null, t["valid"])
        // exact tally for this seed; tools/crosscheck.py found Python's verify gives the same
        // outcome for every one of these 1500 files
        assertEquals(
            mapOf("bad_signature" to 816, "data_offsets" to 5, "duplicate_name" to 2, "format" to 5, "header_encoding" to 227,
                "header_json" to 305, "header_length" to 7, "manifest" to 49, "metadata" to 7, "signature_field" to 27,
                "tensor_header" to 43, "version" to 7),
            t,
        )
    }

    @Test
    fun bitFlipsWithoutKey() {
        // an unsigned bundle admitted without a key: the tensor digests still guard the data, so
        // whatever verifies carries the original tensors (flips in e.g. the creation time can verify)
        val t = fuzz("unsigned", "executorch", seed = 7, rounds = 1500, key = false)
        assertEquals(1500, t.values.sum())
        // exact tally for this seed, identical outcome per file in Python (tools/crosscheck.py)
        assertEquals(TALLY_WITHOUT_KEY, t)
    }

    @Test
    fun everyPrefixIsATypedError() {
        val good = Golden.bundle("coreml-merged")
        val n = ByteBuffer.wrap(good, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong(0)
        for (len in 0 until good.size) {
            val code = codeOf { BundleVerifier.verify(ByteSource.of(good.copyOf(len)), Golden.artifact("coreml"), Golden.publicKey) }
            val want = when {
                len < 8 -> "truncated"
                len < 8 + n -> "header_length"
                else -> "data_offsets"
            }
            assertEquals("prefix of $len bytes", want, code)
        }
    }

    @Test
    fun randomHeaderLengthsAndGarbage() {
        val rnd = Random(99)
        val tally = sortedMapOf<String, Int>()
        for (i in 0 until 2000) {
            val size = 8 + rnd.nextInt(200)
            val raw = ByteArray(size).also { rnd.nextBytes(it) }
            // half the time a plausible header length, the rest random 64-bit values
            if (i % 2 == 0) ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).putLong(0, rnd.nextInt(size - 7).toLong())
            val o = outcome(raw, "executorch", true, emptyMap())
            tally[o] = (tally[o] ?: 0) + 1
        }
        println("  garbage: $tally")
        assertEquals(mapOf("header_encoding" to 943, "header_json" to 57, "header_length" to 1000), tally)
    }
}
