import CryptoKit
import Foundation

/// Random-access bytes: a memory-mapped file (`Data(contentsOf:options: .alwaysMapped)`; pages are
/// read on demand, the file is never copied into memory) or an in-memory buffer (tests, small
/// payloads). Tensor data handed out by `slice` shares the mapping.
public final class ByteSource: @unchecked Sendable {
    /// The bytes. Immutable; a slice of it keeps the mapping alive.
    public let data: Data

    public init(_ data: Data) { self.data = data }

    public var size: Int { data.count }

    public static func of(_ data: Data) -> ByteSource { ByteSource(data) }
    public static func of(_ bytes: [UInt8]) -> ByteSource { ByteSource(Data(bytes)) }

    /// Maps a file read-only. An unreadable file is a `BundleError` with code `io`.
    public static func open(_ url: URL) throws -> ByteSource {
        do {
            return ByteSource(try Data(contentsOf: url, options: .alwaysMapped))
        } catch {
            throw BundleError(.io, "cannot read bundle: \(error.localizedDescription)")
        }
    }

    /// A view of `[position, position + length)` sharing the storage (no copy). Its indices start
    /// at the parent's: read it with `withUnsafeBytes` or the `Data` helpers below, never `d[0]`.
    public func slice(_ position: Int, _ length: Int) -> Data {
        precondition(position >= 0 && length >= 0 && position + length <= data.count, "slice out of range")
        let start = data.startIndex + position
        return data[start..<(start + length)]
    }
}

extension Data {
    /// Little-endian unsigned integers at a byte offset relative to the start of this Data (or slice).
    func u16LE(at offset: Int) -> UInt16 {
        withUnsafeBytes { (p: UnsafeRawBufferPointer) in UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)) }
    }

    func u32LE(at offset: Int) -> UInt32 {
        withUnsafeBytes { (p: UnsafeRawBufferPointer) in UInt32(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }

    func u64LE(at offset: Int) -> UInt64 {
        withUnsafeBytes { (p: UnsafeRawBufferPointer) in UInt64(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
    }

    /// The byte at an offset relative to the start of this Data (or slice).
    func byte(at offset: Int) -> UInt8 { self[startIndex + offset] }

    /// A copy whose indices start at 0.
    var rebased: Data { Data(self) }
}

/// Lowercase hex and SHA-256 helpers (CryptoKit).
public enum Hex {
    private static let digits = Array("0123456789abcdef".utf8)

    public static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var out: [UInt8] = []
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes lowercase or uppercase hex; nil if the text is not hex of even length.
    public static func decode(_ s: String) -> Data? {
        let u = Array(s.utf8)
        guard u.count % 2 == 0 else { return nil }
        func v(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x61...0x66: return c - 0x61 + 10
            case 0x41...0x46: return c - 0x41 + 10
            default: return nil
            }
        }
        var out = Data(capacity: u.count / 2)
        var i = 0
        while i < u.count {
            guard let hi = v(u[i]), let lo = v(u[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    public static func sha256(_ data: Data) -> String { encode(SHA256.hash(data: data)) }
    public static func sha256(_ bytes: [UInt8]) -> String { encode(SHA256.hash(data: bytes)) }
}
