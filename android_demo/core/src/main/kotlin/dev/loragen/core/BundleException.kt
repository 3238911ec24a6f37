package dev.loragen.core

/**
 * The stable reasons a bundle is refused; [id] is the `code` string shared with the Python
 * (`BundleError.code`) and Swift readers and listed in docs/bundle-format.md.
 */
enum class ErrorCode(val id: String) {
    TRUNCATED("truncated"),
    HEADER_LENGTH("header_length"),
    HEADER_ENCODING("header_encoding"),
    HEADER_JSON("header_json"),
    DUPLICATE_NAME("duplicate_name"),
    METADATA("metadata"),
    SIGNATURE_FIELD("signature_field"),
    MANIFEST("manifest"),
    FORMAT("format"),
    VERSION("version"),
    TENSOR_HEADER("tensor_header"),
    DATA_OFFSETS("data_offsets"),
    KEY_REQUIRED("key_required"),
    UNSIGNED("unsigned"),
    BAD_SIGNATURE("bad_signature"),
    KIND("kind"),
    BACKEND("backend"),
    FINGERPRINT("fingerprint"),
    MISSING_TENSOR("missing_tensor"),
    EXTRA_TENSOR("extra_tensor"),
    SLOT("slot"),
    DTYPE("dtype"),
    SHAPE("shape"),
    DIGEST("digest"),

    /** A tensor holds NaN, Inf or a value beyond [BundleFormat.MAX_ABS_VALUE] (docs/bundle-format.md). */
    VALUES("values"),

    /** Not a bundle defect: the file could not be read (Python: `io`). */
    IO("io"),

    /** The artifact manifest or public key given to the verifier is unusable (Python: LoragenError). */
    ARTIFACT("artifact"),

    /** The on-device LoRA merge produced NaN/Inf or a value beyond the slot dtype's range
     *  (Python raises LoragenError "merge of ... produced NaN or Inf values"). */
    MERGE("merge"),

    /** A quantized weight's encoding is unknown to this reader or its parts do not fit it
     *  (Python: LoragenError code `encoding`, loragen_mobile/quant.py). */
    ENCODING("encoding"),

    /** A swap input is missing or inconsistent (Python: `build`), e.g. no base values for a lora merge. */
    BUILD("build"),

    /** The bundle is valid but of the wrong kind for the request, e.g. a merged bundle for run-time
     *  adapter slots (Python: BundleError code `usage`). */
    USAGE("usage"),

    /** A lora bundle that does not fit the artifact's run-time adapter slots: a higher rank, a module
     *  without a slot, factors of other shapes (Python: LoragenError code `input`). */
    INPUT("input");

    override fun toString() = id
}

/** A bundle that is malformed, tampered with, or does not fit the artifact. One line, one code. */
class BundleException(val errorCode: ErrorCode, message: String, cause: Throwable? = null) :
    Exception(message, cause) {
    /** The wire code, e.g. `"bad_signature"`. */
    val code: String get() = errorCode.id
    override fun toString(): String = "BundleException[$code]: $message"
}

internal fun fail(code: ErrorCode, message: String): Nothing = throw BundleException(code, message)
