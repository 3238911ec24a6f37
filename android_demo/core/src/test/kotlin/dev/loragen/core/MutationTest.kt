package dev.loragen.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest

/**
 * The structural and manifest mutations of tests/golden/mutations.py (seeded sample in
 * expected.json "mutations": types swapped, keys dropped or added, 5000-digit integers, NaN/Inf,
 * offsets overlapping or out of range, inconsistent shapes and dtypes, repeated names, wrong
 * slots, kind and base binding, out-of-bound values, the signature rule), re-signed with the
 * golden test key. Each is rebuilt here byte for byte and must get exactly the verdict Python's
 * reader gives (the code, or acceptance only where the mutation keeps the bundle valid).
 */
class MutationTest {
    private val vectors: List<JsonObject> get() = (Golden.expected["mutations"] as List<*>).map { it as JsonObject }

    private class Base(val headerText: String, val data: ByteArray)

    private val bases = HashMap<String, Base>()

    private fun base(name: String): Base = bases.getOrPut(name) {
        val raw = Golden.bundle(name)
        val n = ByteBuffer.wrap(raw, 0, 8).order(ByteOrder.LITTLE_ENDIAN).getLong(0).toInt()
        val text = String(raw, 8, n, Charsets.US_ASCII).trimEnd(' ')
        val sig = ParsedBundle.parse(ByteSource.of(raw)).signatureHex
        val zeroed = text.replaceFirst("\"${BundleFormat.SIG_KEY}\":\"$sig\"", "\"${BundleFormat.SIG_KEY}\":\"${BundleFormat.UNSIGNED}\"")
        Base(zeroed, raw.copyOfRange(8 + n, raw.size))
    }

    private fun num(v: Any?): Int = (v as Long).toInt()

    /** Python `mutations.from_vector`: the edited header and data, padded, then the signature field filled. */
    private fun rebuild(v: JsonObject): ByteArray {
        val b = base(v.str("base")!!)
        val h = v.obj("header")!!
        val text = b.headerText.substring(0, num(h["at"])) + h.str("insert")!! + b.headerText.substring(num(h["at"]) + num(h["cut"]))
        val d = v.obj("data")!!
        val data = b.data.copyOfRange(0, num(d["at"])) + Hex.decode(d.str("insert")!!) + b.data.copyOfRange(num(d["at"]) + num(d["cut"]), b.data.size)
        var hb = text.toByteArray(Charsets.UTF_8)
        if (hb.size % 8 != 0) hb += ByteArray(8 - hb.size % 8) { ' '.code.toByte() }
        val raw = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(0, hb.size.toLong()).array() + hb + data
        val signature = v.str("signature")!!
        if (signature == "zero") return raw
        val needle = "\"${BundleFormat.SIG_KEY}\":\"${BundleFormat.UNSIGNED}\"".toByteArray()
        val at = ParsedBundle.indexOf(raw.copyOfRange(0, 8 + hb.size), needle, 8)
        if (at < 0) return raw
        val sig = if (signature == "key") Hex.encode(Ed25519.sign(Golden.signingKey, MessageDigest.getInstance("SHA-256").digest(raw))) else signature
        sig.toByteArray().copyInto(raw, at + needle.size - BundleFormat.SIG_HEX_LEN - 1)
        return raw
    }

    @Test
    fun everyMutationGetsPythonsVerdict() {
        val vs = vectors
        assertEquals(240, vs.size)
        val tally = sortedMapOf<String, Int>()
        for ((i, v) in vs.withIndex()) {
            val raw = rebuild(v)
            assertEquals("vector $i (${v.str("family")}) rebuilt byte for byte", v["sha256"], sha256Hex(raw))
            val art = Golden.artifact(v.str("base")!!.substringBefore('-'))
            val key = if (v["pubkey"] == true) Golden.publicKey else null
            val got = try {
                BundleVerifier.verify(ByteSource.of(raw), art, key, requireSignature = v["allow_unsigned"] != true)
                null
            } catch (e: BundleException) {
                e.code
            }
            assertEquals("vector $i (${v.str("family")} of ${v.str("base")})", v["code"], got)
            tally[got ?: "valid"] = (tally[got ?: "valid"] ?: 0) + 1
        }
        println("  mutations: $tally")
        // every defect family refused somewhere, and some mutations (ignored fields, unsigned opt-in) valid
        for (c in listOf("header_json", "duplicate_name", "metadata", "manifest", "version", "tensor_header", "data_offsets",
            "key_required", "bad_signature", "slot", "digest", "values", "missing_tensor", "extra_tensor", "valid")) {
            assertTrue("no vector with outcome $c: $tally", (tally[c] ?: 0) > 0)
        }
    }
}
