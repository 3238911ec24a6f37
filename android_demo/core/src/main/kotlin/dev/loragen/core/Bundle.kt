package dev.loragen.core

import java.io.File
import java.nio.charset.StandardCharsets
import java.security.MessageDigest
import java.security.Provider
import java.security.PublicKey

/** Constants of bundle format version 1 (docs/bundle-format.md). */
object BundleFormat {
    const val FORMAT = "loragen-bundle"
    const val FORMAT_VERSION = 1
    val KINDS = listOf("merged", "lora")
    const val SIG_KEY = "loragen.signature"
    const val MANIFEST_KEY = "loragen.manifest"
    const val SIG_HEX_LEN = 128
    val UNSIGNED: String = "0".repeat(SIG_HEX_LEN)

    /** Magnitude bounds (docs/bundle-format.md, Python `format.MAX_*`): every floating-point value
     *  a bundle carries and every merged weight is finite with |x| <= the largest finite fp16 value. */
    const val MAX_ABS_VALUE = 65504.0
    const val MAX_LORA_SCALE = 1024.0
    const val MAX_LORA_RANK = 65536L
}

/** A structurally valid bundle: header parsed, manifest parsed, offsets checked. Data stays in [source]. */
class ParsedBundle internal constructor(
    val container: SafetensorsFile,
    val manifest: JsonObject,
    val signatureHex: String,
) {
    val source: ByteSource get() = container.source
    val tensors: Map<String, TensorEntry> get() = container.tensors
    val signed: Boolean get() = signatureHex != BundleFormat.UNSIGNED

    /**
     * SHA-256 of the whole file with the 128 signature characters replaced by ASCII '0', computed in
     * one streaming pass. The header must contain `"loragen.signature":"<hex>"` exactly once.
     */
    fun signingDigest(): ByteArray {
        val needle = "\"${BundleFormat.SIG_KEY}\":\"$signatureHex\"".toByteArray(StandardCharsets.UTF_8)
        val hb = container.headerBytes
        val at = indexOf(hb, needle, 0)
        if (at < 0 || indexOf(hb, needle, at + 1) >= 0) {
            fail(ErrorCode.SIGNATURE_FIELD, "bundle header must contain '\"${BundleFormat.SIG_KEY}\":\"<hex>\"' exactly once")
        }
        val start = 8L + at + needle.size - BundleFormat.SIG_HEX_LEN - 1
        val md = MessageDigest.getInstance("SHA-256")
        digestRange(md, 0, start)
        md.update(BundleFormat.UNSIGNED.toByteArray(StandardCharsets.US_ASCII))
        val after = start + BundleFormat.SIG_HEX_LEN
        digestRange(md, after, source.size - after)
        return md.digest()
    }

    private fun digestRange(md: MessageDigest, position: Long, length: Long) {
        val buf = java.nio.ByteBuffer.allocate(1 shl 20)
        var p = position
        val end = position + length
        while (p < end) {
            buf.clear()
            val n = minOf(buf.capacity().toLong(), end - p).toInt()
            buf.limit(n)
            io { source.read(p, buf) }
            md.update(buf.array(), 0, n)
            p += n
        }
    }

    companion object {
        /** Container checks, in the order of docs/bundle-format.md (Python `format.parse`). */
        fun parse(source: ByteSource): ParsedBundle {
            val (n, bytes, header) = SafetensorsFile.readHeader(source)
            val meta = header["__metadata__"]
            if (meta !is JsonObject || !meta.entries.all { it.value is String }) {
                fail(ErrorCode.METADATA, "bundle header has no __metadata__ object of strings")
            }
            val sig = meta[BundleFormat.SIG_KEY]
            if (sig !is String || sig.length != BundleFormat.SIG_HEX_LEN || !sig.all { it in '0'..'9' || it in 'a'..'f' }) {
                fail(ErrorCode.SIGNATURE_FIELD, "bundle has no valid '${BundleFormat.SIG_KEY}' (128 lowercase hex characters)")
            }
            val manifest = try {
                Json.parse(meta.str(BundleFormat.MANIFEST_KEY) ?: "")
            } catch (e: JsonDuplicateKeyException) {
                fail(ErrorCode.DUPLICATE_NAME, "bundle header has duplicate entry '${e.key}'")
            } catch (e: JsonSyntaxException) {
                fail(ErrorCode.MANIFEST, "bundle has no valid '${BundleFormat.MANIFEST_KEY}' JSON")
            }
            if (manifest !is JsonObject || manifest["format"] != BundleFormat.FORMAT) {
                val f = (manifest as? JsonObject)?.get("format")
                fail(ErrorCode.FORMAT, "not a ${BundleFormat.FORMAT} file (manifest format is ${JsonValues.render(f)})")
            }
            // exactly the JSON integer 1: not 1.0, not true
            if (manifest["format_version"] != BundleFormat.FORMAT_VERSION.toLong()) {
                fail(ErrorCode.VERSION, "unsupported bundle format_version ${JsonValues.render(manifest["format_version"])}; " +
                    "this reader supports ${BundleFormat.FORMAT_VERSION}")
            }
            val tensors = SafetensorsFile.parseEntries(header, source.size - 8 - n)
            return ParsedBundle(SafetensorsFile(source, n, bytes, header, tensors), manifest, sig)
        }

        internal fun indexOf(hay: ByteArray, needle: ByteArray, from: Int): Int {
            outer@ for (i in from..hay.size - needle.size) {
                for (j in needle.indices) if (hay[i + j] != needle[j]) continue@outer
                return i
            }
            return -1
        }
    }
}

/**
 * A base artifact's manifest (`artifact.json`): backend, fingerprint and swap slots.
 * Parsed with the strict JSON reader; slots are checked lazily, where Python checks them.
 */
class Artifact(val json: JsonObject) {
    val backend: Any? get() = json["backend"]
    val fingerprint: Any? get() = json["fingerprint"]
    val name: String? get() = json.str("model_id")

    /** Parameter name -> slot object (Python `core.slots_by_param`). */
    val slotsByParam: Map<String, JsonObject> by lazy {
        val raw = json["swap_slots"]
        val list: List<JsonObject> = when (raw) {
            is JsonObject -> raw.entries.map { (k, v) ->
                val m = LinkedHashMap<String, Any?>()
                m["name"] = k
                (v as? JsonObject)?.let { m.putAll(it.map) } ?: fail(ErrorCode.ARTIFACT, "artifact swap slot $k is not an object")
                JsonObject(m)
            }
            is List<*> -> raw.map { it as? JsonObject ?: fail(ErrorCode.ARTIFACT, "artifact swap slot is not an object") }
            else -> emptyList()
        }
        if (list.isEmpty()) fail(ErrorCode.SLOT, "artifact has no swap slots; re-export it with loragen export")
        val out = LinkedHashMap<String, JsonObject>()
        for (s in list) out[s.str("name") ?: fail(ErrorCode.ARTIFACT, "artifact swap slot without a name")] = s
        out
    }

    companion object {
        /** Slot fields that describe the tensor rather than where the backend keeps it. */
        val DESCRIPTIVE = setOf("name", "dtype", "shape", "nbytes", "sha256")

        fun locator(slot: JsonObject): JsonObject {
            val m = LinkedHashMap<String, Any?>()
            for ((k, v) in slot.entries) if (k !in DESCRIPTIVE) m[k] = v
            return JsonObject(m)
        }

        fun parse(text: String): Artifact {
            val v = try {
                Json.parse(text)
            } catch (e: JsonException) {
                fail(ErrorCode.ARTIFACT, "artifact.json is not valid JSON: ${e.message}")
            }
            return Artifact(v as? JsonObject ?: fail(ErrorCode.ARTIFACT, "artifact.json is not a JSON object"))
        }

        fun read(file: File): Artifact = parse(file.readText(Charsets.UTF_8))
    }
}

/** A bundle that passed every check of docs/bundle-format.md against [artifact]. */
class VerifiedBundle internal constructor(
    val parsed: ParsedBundle,
    val kind: String,
    val manifest: JsonObject,
    val artifact: Artifact,
    /** True when an Ed25519 signature was verified; false only for an admitted unsigned bundle. */
    val signatureVerified: Boolean = false,
) {
    val params: List<String> get() =
        manifest.obj("tensors")!!.entries.map { (it.value as JsonObject).str("param")!! }.distinct().sortedWith(CodePointOrder)

    /** LoRA scale (`alpha / r`) for lora bundles. */
    val lora: JsonObject? get() = manifest.obj("lora")
}

/** Python's string order (by code point; Kotlin's default compares UTF-16 units). */
object CodePointOrder : Comparator<String> {
    override fun compare(a: String, b: String): Int {
        var i = 0
        var j = 0
        while (i < a.length && j < b.length) {
            val x = a.codePointAt(i)
            val y = b.codePointAt(j)
            if (x != y) return x.compareTo(y)
            i += Character.charCount(x)
            j += Character.charCount(y)
        }
        return (a.length - i).compareTo(b.length - j)
    }
}

object BundleVerifier {
    /**
     * Every check a phone makes before a swap (Python `core.verify`), in the documented order;
     * throws [BundleException] with the first failure's code. [provider]: an optional JCA provider
     * for Ed25519 (Android before API 33 has none built in; pass BouncyCastle's).
     */
    fun verify(
        source: ByteSource,
        artifact: Artifact,
        publicKey: PublicKey?,
        requireSignature: Boolean = true,
        provider: Provider? = null,
    ): VerifiedBundle {
        val pb = ParsedBundle.parse(source)
        val verified = checkSignature(pb, publicKey, requireSignature, provider)
        val m = pb.manifest
        val kind = m["kind"]
        if (kind !is String || kind !in BundleFormat.KINDS) {
            fail(ErrorCode.KIND, "bundle kind ${JsonValues.render(kind)} is not one of ${BundleFormat.KINDS.joinToString(", ")}")
        }
        val base = m.obj("base") ?: JsonObject(LinkedHashMap())
        if (!JsonValues.strictEquals(base["backend"], artifact.backend)) {
            fail(ErrorCode.BACKEND, "bundle is for backend ${JsonValues.render(base["backend"])}, the artifact is ${JsonValues.render(artifact.backend)}")
        }
        if (!JsonValues.strictEquals(base["fingerprint"], artifact.fingerprint)) {
            fail(ErrorCode.FINGERPRINT, "bundle is bound to base fingerprint ${JsonValues.render(base["fingerprint"]).take(17)}..., " +
                "the artifact's is ${JsonValues.render(artifact.fingerprint).take(17)}...")
        }
        val entries = m["tensors"]
        if (entries !is JsonObject || !entries.entries.all { it.value is JsonObject }) {
            fail(ErrorCode.MANIFEST, "bundle manifest has no valid 'tensors' object")
        }
        for (name in entries.keys.sortedWith(CodePointOrder)) {
            val e = entries[name] as JsonObject
            for ((k, ok) in ENTRY_TYPES) {
                if (!ok(e[k])) fail(ErrorCode.MANIFEST, "bundle manifest entry of tensor $name has no valid '$k'")
            }
        }
        if (entries.keys != pb.tensors.keys) {
            val diff = (entries.keys - pb.tensors.keys) + (pb.tensors.keys - entries.keys)
            fail(ErrorCode.MANIFEST, "bundle manifest and tensors disagree on ${diff.sortedWith(CodePointOrder).take(1)}")
        }
        val slots = artifact.slotsByParam
        var r = 0L
        val expected: Set<String> = if (kind == "merged") {
            slots.keys
        } else {
            val params = entries.entries.map { (it.value as JsonObject)["param"] }.toSet()
            val exp = LinkedHashSet<String>()
            for (p in params) if (p is String && p in slots) {
                val mod = moduleOf(p)
                exp.add("$mod.lora_A"); exp.add("$mod.lora_B")
            }
            val lora = m["lora"] as? JsonObject
                ?: fail(ErrorCode.MANIFEST, "lora bundle has no valid 'lora' {r, alpha, scale = alpha / r} entry")
            r = checkLoraParams(lora["r"], lora["alpha"], lora["scale"])
            exp
        }
        val names = pb.tensors.keys
        val missing = (expected - names).sortedWith(CodePointOrder)
        val extra = (names - expected).sortedWith(CodePointOrder)
        if (missing.isNotEmpty()) fail(ErrorCode.MISSING_TENSOR, "bundle is missing tensor ${missing[0]}")
        if (extra.isNotEmpty()) fail(ErrorCode.EXTRA_TENSOR, "bundle has unexpected tensor ${extra[0]} (no such swap slot in the artifact)")
        for (name in entries.keys.sortedWith(CodePointOrder)) {
            val e = entries[name] as JsonObject
            val te = pb.tensors.getValue(name)
            val param = e["param"]
            val slot = (param as? String)?.let { slots[it] }
                ?: fail(ErrorCode.SLOT, "tensor $name names parameter ${JsonValues.render(param)}, which has no swap slot")
            val loc = Artifact.locator(slot)
            if (!JsonValues.strictEquals(e["slot"], loc)) {
                fail(ErrorCode.SLOT, "tensor $name is addressed to slot ${JsonValues.render(e["slot"])}, the artifact has ${JsonValues.render(loc)}")
            }
            if (e["dtype"] != te.dtype.id || !JsonValues.strictEquals(e["shape"], te.shape)) {
                fail(ErrorCode.MANIFEST, "tensor $name: manifest says ${JsonValues.render(e["dtype"])} ${JsonValues.render(e["shape"])}, " +
                    "data is ${te.dtype.id} ${te.shape}")
            }
            val slotDtype = slot.str("dtype") ?: fail(ErrorCode.ARTIFACT, "swap slot $param has no dtype")
            val want = DType.stName(slotDtype)
            if (te.dtype.id != want) fail(ErrorCode.DTYPE, "tensor $name has dtype ${te.dtype.id}, the artifact's slot is $want")
            val sshape = slot["shape"] as? List<*>
            if (sshape == null || sshape.size != 2) fail(ErrorCode.ARTIFACT, "swap slot $param has no 2-D shape")
            val outF = sshape[0]
            val inF = sshape[1]
            val ok = when {
                kind == "merged" -> JsonValues.pyEquals(te.shape, sshape)
                name.endsWith(".lora_A") -> te.shape.size == 2 && JsonValues.pyEquals(te.shape[1], inF) && te.shape[0] == r
                else -> te.shape.size == 2 && JsonValues.pyEquals(te.shape[0], outF) && te.shape[1] == r
            }
            if (!ok) fail(ErrorCode.SHAPE, "tensor $name has shape ${te.shape}, which does not fit slot shape ${JsonValues.render(sshape)}")
            if (pb.container.tensorSha256(name) != e["sha256"]) {
                fail(ErrorCode.DIGEST, "tensor $name does not match its sha256 in the manifest")
            }
            valueViolation(pb.container.tensorBuffer(name), te.dtype)?.let { fail(ErrorCode.VALUES, "tensor $name has $it") }
        }
        return VerifiedBundle(pb, kind, m, artifact, verified)
    }

    /** Manifest tensor entry fields and their JSON types (Python `core._ENTRY_TYPES`). */
    private val ENTRY_TYPES: List<Pair<String, (Any?) -> Boolean>> = listOf(
        "param" to { v -> v is String }, "slot" to { v -> v is JsonObject }, "dtype" to { v -> v is String },
        "shape" to { v -> v is List<*> }, "sha256" to { v -> v is String },
    )

    /**
     * The signature rule (Python `format.check_signature`): a bundle that carries a signature is
     * always verified, so it needs [publicKey], and a bad signature is always refused;
     * `requireSignature = false` admits only bundles carrying the all-zero "unsigned" signature.
     * Returns true when a signature was verified.
     */
    fun checkSignature(pb: ParsedBundle, publicKey: PublicKey?, requireSignature: Boolean, provider: Provider? = null): Boolean {
        if (pb.signed) {
            if (publicKey == null) {
                fail(ErrorCode.KEY_REQUIRED, "bundle is signed: a public key is required to verify it (unsigned bundles only may be admitted without one)")
            }
            val digest = pb.signingDigest()
            if (!Ed25519.verify(publicKey, Hex.decode(pb.signatureHex), digest, provider)) {
                fail(ErrorCode.BAD_SIGNATURE, "bundle signature does not verify with this public key (tampered or signed with another key)")
            }
            return true
        }
        if (requireSignature) {
            if (publicKey == null) fail(ErrorCode.KEY_REQUIRED, "a public key is required to verify this bundle")
            fail(ErrorCode.UNSIGNED, "bundle is unsigned but a public key was given")
        }
        pb.signingDigest() // the signature field must still be well formed and unique
        return false
    }

    /** r: an integer 1..MAX_LORA_RANK; alpha, scale: finite numbers, |scale| <= MAX_LORA_SCALE,
     *  scale = alpha / r (relative 1e-9). Returns r. (Python `core.check_lora_params`.) */
    fun checkLoraParams(r: Any?, alpha: Any?, scale: Any?): Long {
        val a = JsonValues.finite(alpha)
        val sc = JsonValues.finite(scale)
        if (r !is Long || r < 1 || r > BundleFormat.MAX_LORA_RANK || a == null || sc == null ||
            Math.abs(sc) > BundleFormat.MAX_LORA_SCALE || Math.abs(sc - a / r.toDouble()) > 1e-9 * maxOf(1.0, Math.abs(sc))
        ) {
            fail(ErrorCode.MANIFEST, "lora bundle has no valid 'lora' {r, alpha, scale = alpha / r} entry (r an integer " +
                "1..${BundleFormat.MAX_LORA_RANK}, alpha and scale finite, |scale| <= ${BundleFormat.MAX_LORA_SCALE})")
        }
        return r
    }

    /** Why a tensor's floating-point values break the bounds, or null (Python `format.value_violation`). */
    fun valueViolation(buf: java.nio.ByteBuffer, dtype: DType): String? {
        if (dtype != DType.F32 && dtype != DType.F16 && dtype != DType.BF16) return null
        val b = buf.duplicate().order(java.nio.ByteOrder.LITTLE_ENDIAN)
        val p = b.position()
        val n = b.remaining() / dtype.size
        var peak = 0.0f
        for (i in 0 until n) {
            val x = when (dtype) {
                DType.F32 -> b.getFloat(p + 4 * i)
                DType.F16 -> Fp16.toFloat(b.getShort(p + 2 * i).toInt() and 0xffff)
                else -> Bf16.toFloat(b.getShort(p + 2 * i).toInt() and 0xffff)
            }
            if (x.isNaN() || x.isInfinite()) return "NaN or Inf values"
            peak = maxOf(peak, Math.abs(x))
        }
        return if (peak > BundleFormat.MAX_ABS_VALUE) "a value of magnitude $peak, beyond the bound ${BundleFormat.MAX_ABS_VALUE}" else null
    }

    fun moduleOf(param: String): String = if (param.endsWith(".weight")) param.dropLast(".weight".length) else param
}
