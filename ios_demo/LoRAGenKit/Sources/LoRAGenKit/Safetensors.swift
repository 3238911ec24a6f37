import CryptoKit
import Foundation

/// safetensors dtypes a bundle may carry.
public enum DType: String, CaseIterable, Sendable {
    case F32, F16, BF16, I8, U8, I32, I64

    /// Element size in bytes.
    public var size: Int {
        switch self {
        case .F32, .I32: return 4
        case .F16, .BF16: return 2
        case .I8, .U8: return 1
        case .I64: return 8
        }
    }

    private static let names: [String: String] = [
        "float32": "F32", "fp32": "F32", "float16": "F16", "fp16": "F16", "bfloat16": "BF16",
        "bf16": "BF16", "int8": "I8", "uint8": "U8", "int32": "I32", "int64": "I64",
    ]

    /// The safetensors code for a dtype name used in artifact.json (Python `core.st_dtype`).
    public static func stName(_ name: String) -> String {
        let s = name.replacingOccurrences(of: "torch.", with: "")
        return names[s.lowercased()] ?? s.uppercased()
    }
}

/// One tensor of a safetensors header, after the offset checks.
public struct TensorEntry: Sendable {
    public let name: JSONString
    public let dtype: DType
    /// The shape as written (exact integers, compared with Python semantics).
    public let shapeValues: [JSONValue]
    /// The shape as Ints. Every dimension fits: begin <= end <= data length bounds the product,
    /// except for a zero-element tensor, where a dimension too large for Int reads as -1.
    public let shape: [Int]
    public let begin: Int
    public let end: Int

    public var nbytes: Int { end - begin }
    public var numel: Int { shape.reduce(1, *) }
}

/// The safetensors container: 8-byte little-endian header length N, N bytes of UTF-8 JSON, data.
/// Only the header is decoded; tensor data stays in the `ByteSource` (a memory map for files)
/// and is reached through `tensorData` (no copy) or hashed in place.
public final class SafetensorsFile: @unchecked Sendable {
    public static let maxHeaderBytes = 16 * 1024 * 1024

    public let source: ByteSource
    public let headerLength: Int
    /// The raw header bytes (the signing digest is located in them).
    public let headerBytes: Data
    public let header: JSONObject
    /// Tensors in data order.
    public let entries: [TensorEntry]
    public let tensors: [JSONString: TensorEntry]

    init(source: ByteSource, headerLength: Int, headerBytes: Data, header: JSONObject, entries: [TensorEntry]) {
        self.source = source
        self.headerLength = headerLength
        self.headerBytes = headerBytes
        self.header = header
        self.entries = entries
        var t: [JSONString: TensorEntry] = [:]
        for e in entries { t[e.name] = e }
        self.tensors = t
    }

    public var dataStart: Int { 8 + headerLength }

    /// The tensor's bytes: a view into the source (a memory map for files), little-endian, C order.
    public func tensorData(_ name: JSONString) -> Data? {
        guard let e = tensors[name] else { return nil }
        return source.slice(dataStart + e.begin, e.nbytes)
    }

    public func tensorData(_ name: String) -> Data? { tensorData(JSONString(name)) }

    /// SHA-256 (lowercase hex) of a tensor's bytes.
    public func tensorSHA256(_ name: JSONString) -> String? {
        guard let d = tensorData(name) else { return nil }
        return Hex.sha256(d)
    }

    /// A plain safetensors file (base values, expected tensors): the same checks as a bundle's container.
    public static func read(_ source: ByteSource) throws -> SafetensorsFile {
        let (n, bytes, header) = try readHeader(source)
        let entries = try parseEntries(header, dataLength: source.size - 8 - n)
        return SafetensorsFile(source: source, headerLength: n, headerBytes: bytes, header: header, entries: entries)
    }

    /// Container checks up to a JSON object header: `truncated`, `header_length`,
    /// `header_encoding`, `header_json`, `duplicate_name`.
    static func readHeader(_ source: ByteSource) throws -> (Int, Data, JSONObject) {
        let size = source.size
        if size < 8 {
            throw BundleError(.truncated, "bundle is truncated: \(size) bytes, shorter than the 8-byte header length")
        }
        let n64 = source.data.u64LE(at: 0)
        if n64 > UInt64(size - 8) {
            throw BundleError(.headerLength, "bundle header length \(n64) is larger than the file (\(size) bytes)")
        }
        if n64 > UInt64(maxHeaderBytes) {
            throw BundleError(.headerLength, "bundle header length \(n64) exceeds the \(maxHeaderBytes)-byte limit")
        }
        let n = Int(n64)
        let bytes = source.slice(8, n)
        guard let units = bytes.withUnsafeBytes({ (p: UnsafeRawBufferPointer) in JSON.decodeUTF8Strict(p) }) else {
            throw BundleError(.headerEncoding, "bundle header is not valid UTF-8")
        }
        let header: JSONValue
        do {
            header = try JSON.parse(units: units)
        } catch JSONError.duplicateKey(let k) {
            throw BundleError(.duplicateName, "bundle header has duplicate entry '\(k.string)'")
        } catch JSONError.syntax(let msg, let at) {
            throw BundleError(.headerJSON, "bundle header is not valid JSON (\(msg) at char \(at))")
        }
        guard case .object(let o) = header else {
            throw BundleError(.headerJSON, "bundle header is not a JSON object")
        }
        return (n, bytes, o)
    }

    /// Tensor entries in data order; checks dtype, shape, offsets, contiguity and full coverage,
    /// with exact integer arithmetic (as Python's ints: nothing overflows silently).
    static func parseEntries(_ header: JSONObject, dataLength: Int) throws -> [TensorEntry] {
        var out: [(Int, TensorEntry)] = []
        for (i, (name, spec)) in header.entries.enumerated() {
            if name == JSONString("__metadata__") { continue }
            let n = name.string
            guard case .object(let o) = spec,
                  Set(o.keys) == Set([JSONString("dtype"), JSONString("shape"), JSONString("data_offsets")]) else {
                throw BundleError(.tensorHeader, "tensor '\(n)' has a malformed header entry")
            }
            guard let ds = o["dtype"]?.jsonString, let dtype = DType(rawValue: ds.string), JSONString(dtype.rawValue) == ds else {
                throw BundleError(.tensorHeader, "tensor '\(n)' has unsupported dtype \(PyJSON.repr(o["dtype"]))")
            }
            let shapeV = o["shape"]
            let offsV = o["data_offsets"]
            guard case .array(let shape)? = shapeV,
                  shape.allSatisfy({ isNonNegativeInteger($0) }),
                  case .array(let offs)? = offsV, offs.count == 2, offs.allSatisfy({ $0.isInteger }) else {
                throw BundleError(.tensorHeader, "tensor '\(n)' has a malformed shape or data_offsets")
            }
            let bad = BundleError(.dataOffsets, "tensor '\(n)' data_offsets \(PyJSON.repr(offsV)) do not fit its shape "
                + "\(PyJSON.repr(shapeV)) \(dtype.rawValue) or the \(dataLength)-byte data section")
            // 0 <= begin <= end <= dataLength: a big integer or a negative one fails here
            guard case .int(let b64) = offs[0], case .int(let e64) = offs[1], b64 >= 0, b64 <= e64, e64 <= Int64(dataLength) else {
                throw bad
            }
            // the element count, exactly: a zero dimension makes it 0 whatever the others are
            var count: Int64 = 1
            if shape.contains(where: { if case .int(0) = $0 { return true }; return false }) {
                count = 0
            } else {
                for d in shape {
                    guard case .int(let v) = d else { throw bad } // > 2^63: cannot fit the data section
                    let (p, overflow) = count.multipliedReportingOverflow(by: v)
                    if overflow { throw bad }
                    count = p
                }
            }
            let (nbytes, overflow) = count.multipliedReportingOverflow(by: Int64(dtype.size))
            if overflow || e64 - b64 != nbytes { throw bad }
            let dims = shape.map { v -> Int in
                if case .int(let x) = v, let i = Int(exactly: x) { return i }
                return -1
            }
            out.append((i, TensorEntry(name: name, dtype: dtype, shapeValues: shape, shape: dims, begin: Int(b64), end: Int(e64))))
        }
        // stable sort by data offset, as Python's sort
        out.sort { $0.1.begin != $1.1.begin ? $0.1.begin < $1.1.begin : $0.0 < $1.0 }
        var pos = 0
        for (_, e) in out {
            if e.begin != pos {
                throw BundleError(.dataOffsets, "tensor '\(e.name.string)' data is not contiguous with the previous tensor "
                    + "(offset \(e.begin), expected \(pos))")
            }
            pos = e.end
        }
        if pos != dataLength {
            throw BundleError(.dataOffsets, "bundle data section has \(dataLength - pos) trailing bytes not covered by any tensor")
        }
        return out.map { $0.1 }
    }

    private static func isNonNegativeInteger(_ v: JSONValue) -> Bool {
        switch v {
        case .int(let x): return x >= 0
        case .bigInt(let s): return !s.hasPrefix("-")
        default: return false
        }
    }
}
