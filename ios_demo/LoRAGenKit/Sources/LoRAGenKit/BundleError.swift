import Foundation

/// The stable reasons a bundle is refused. `rawValue` is the wire code shared with the Python
/// reference (`BundleError.code`) and the Kotlin core (`ErrorCode.id`), listed in
/// docs/bundle-format.md.
public enum ErrorCode: String, CaseIterable, Sendable {
    case truncated
    case headerLength = "header_length"
    case headerEncoding = "header_encoding"
    case headerJSON = "header_json"
    case duplicateName = "duplicate_name"
    case metadata
    case signatureField = "signature_field"
    case manifest
    case format
    case version
    case tensorHeader = "tensor_header"
    case dataOffsets = "data_offsets"
    case keyRequired = "key_required"
    case unsigned
    case badSignature = "bad_signature"
    case kind
    case backend
    case fingerprint
    case missingTensor = "missing_tensor"
    case extraTensor = "extra_tensor"
    case slot
    case dtype
    case shape
    case digest
    /// A tensor holds NaN, Inf or a value beyond `BundleFormat.maxAbsValue` (docs/bundle-format.md).
    case values

    /// Not a bundle defect: the file could not be read (Python: `io`).
    case io
    /// The artifact manifest or public key given to the verifier is unusable.
    case artifact
    /// The on-device LoRA merge produced NaN/Inf or a value beyond the slot dtype's range.
    case merge
    /// A swap input is missing or inconsistent, e.g. no base values for a lora merge.
    case build
    /// A quantized weight's encoding is unknown to this reader or its parts do not fit it
    /// (Python: LoragenError code `encoding`, loragen_mobile/quant.py).
    case encoding
    /// The bundle is valid but of the wrong kind for the request, e.g. a merged bundle for run-time
    /// adapter slots (Python: BundleError code `usage`).
    case usage
    /// A lora bundle that does not fit the artifact's run-time adapter slots: a higher rank, a module
    /// without a slot, factors of other shapes (Python: LoragenError code `input`).
    case input
}

/// A bundle that is malformed, tampered with, or does not fit the artifact: one line, one code.
public struct BundleError: Error, CustomStringConvertible, LocalizedError, Sendable {
    public let errorCode: ErrorCode
    public let message: String

    public init(_ code: ErrorCode, _ message: String) {
        self.errorCode = code
        self.message = message
    }

    /// The wire code, e.g. `"bad_signature"`.
    public var code: String { errorCode.rawValue }
    public var description: String { "BundleError[\(code)]: \(message)" }
    public var errorDescription: String? { message }
}
