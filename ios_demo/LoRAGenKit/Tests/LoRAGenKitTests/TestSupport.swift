import CryptoKit
import Foundation
import XCTest
@testable import LoRAGenKit

struct GoldenFileNotListed: Error, CustomStringConvertible {
    let path: String
    var description: String { "\(path) is not listed in GoldenFiles.swift" }
}

/// tests/golden/ of the repository, found relative to this file:
/// ios_demo/LoRAGenKit/Tests/LoRAGenKitTests/ -> ../../../../tests/golden.
enum Golden {
    static let repoRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../../..").standardizedFileURL
    static let dir: URL = repoRoot.appendingPathComponent("tests/golden")

    /// A golden file; only paths listed in `GoldenFiles.all` are served.
    static func url(_ rel: String) throws -> URL {
        guard GoldenFiles.all.contains(rel) else { throw GoldenFileNotListed(path: rel) }
        return dir.appendingPathComponent(rel)
    }

    static func bytes(_ rel: String) throws -> Data { try Data(contentsOf: url(rel)) }
    static func bundle(_ name: String) throws -> Data { try bytes("bundles/\(name).bundle") }
    static func bundleURL(_ name: String) throws -> URL { try url("bundles/\(name).bundle") }
    static func artifact(_ backend: String) throws -> Artifact { try Artifact.read(url("artifacts/\(backend).json")) }
    static func artifactFor(_ name: String) throws -> Artifact { try Artifact.read(url(try entry(name).str("artifact")!)) }
    static func safetensors(_ rel: String) throws -> SafetensorsFile { try SafetensorsFile.read(ByteSource.open(url(rel))) }

    static func expected() throws -> JSONObject {
        guard case .object(let o) = try JSON.parse(String(decoding: try bytes("expected.json"), as: UTF8.self)) else {
            throw GoldenFileNotListed(path: "expected.json (not an object)")
        }
        return o
    }

    static func bundles() throws -> JSONObject { try expected().obj("bundles")! }
    static func entry(_ name: String) throws -> JSONObject { try bundles().obj(name)! }

    /// The vector names, from the bundle files listed in GoldenFiles.swift.
    static var vectorNames: [String] {
        GoldenFiles.all.filter { $0.hasPrefix("bundles/") && $0.hasSuffix(".bundle") }
            .map { String($0.dropFirst("bundles/".count).dropLast(".bundle".count)) }
            .sorted()
    }

    static func publicKey() throws -> Curve25519.Signing.PublicKey {
        try Ed25519.publicKey(pem: String(decoding: try bytes("keys/public_key.pem"), as: UTF8.self))
    }

    static func otherKey() throws -> Curve25519.Signing.PublicKey {
        try Ed25519.publicKey(pem: String(decoding: try bytes("keys/other_public_key.pem"), as: UTF8.self))
    }

    static func signingKey() throws -> Curve25519.Signing.PrivateKey {
        try Ed25519.privateKey(pem: String(decoding: try bytes("keys/signing_key.pem"), as: UTF8.self))
    }
}

/// The error code a block throws (`BundleError`), or nil when it returns; other errors propagate.
func codeOf(_ block: () throws -> Void) throws -> String? {
    do {
        try block()
        return nil
    } catch let e as BundleError {
        return e.code
    }
}

func expectCode(_ code: String, file: StaticString = #filePath, line: UInt = #line, _ block: () throws -> Void) {
    do {
        try block()
        XCTFail("expected BundleError with code \(code), nothing was thrown", file: file, line: line)
    } catch let e as BundleError {
        XCTAssertEqual(e.code, code, "error code (message: \(e.message))", file: file, line: line)
    } catch {
        XCTFail("expected BundleError with code \(code), got \(error)", file: file, line: line)
    }
}

extension Data {
    /// A copy with indices from 0 (golden files are read whole in tests).
    var byteArray: [UInt8] { [UInt8](self) }
}

func verify(_ raw: Data, _ art: Artifact, _ key: Curve25519.Signing.PublicKey?, requireSignature: Bool = true) throws -> VerifiedBundle {
    try BundleVerifier.verify(ByteSource.of(raw), artifact: art, publicKey: key, requireSignature: requireSignature)
}

/// Sets (or with nil removes) a nested value of a JSON object, e.g. `["tensors", name, "param"]`.
func setting(_ o: JSONObject, _ path: [String], _ value: JSONValue?) -> JSONObject {
    var o = o
    if path.count == 1 {
        o[path[0]] = value
    } else {
        o[path[0]] = .object(setting(o.obj(path[0]) ?? JSONObject(), Array(path.dropFirst()), value))
    }
    return o
}

/// Builds bundles the way Python's `format.serialize` does (tensors by element size then name,
/// compact ASCII header, space padding to 8, signature over the digest), so tests can make precise
/// defects and still sign them with the golden test key. CryptoKit's Ed25519 signatures are
/// randomized, so signed outputs differ in the 128 signature characters from Python's; unsigned
/// outputs are byte-identical (the signing digest of a signed bundle is the sha256 of its
/// unsigned form).
enum BundleWriter {
    struct T {
        let name: String
        let dtype: String
        let shape: [Int]
        let data: Data
    }

    static func tensorsOf(_ raw: Data) throws -> [T] {
        let f = try SafetensorsFile.read(ByteSource.of(raw))
        return f.entries.map { e in
            T(name: e.name.string, dtype: e.dtype.rawValue, shape: e.shape, data: f.tensorData(e.name)!.rebased)
        }
    }

    static func manifestOf(_ raw: Data) throws -> JSONObject { try ParsedBundle.parse(ByteSource.of(raw)).manifest }

    /// `manifest`: a JSONObject (rendered with sorted keys, as Python) or raw text (a String).
    static func assemble(_ tensors: [T], manifest: Any, sign: Bool = true, metaExtra: [String: JSONValue] = [:],
                         headerText: ((String) -> String)? = nil, specOverride: [String: JSONValue] = [:]) throws -> Data {
        var meta: [(String, JSONValue)] = []
        let manifestText: String
        if let s = manifest as? String {
            manifestText = s
        } else {
            manifestText = PyJSON.dumps(.object(manifest as! JSONObject), sortKeys: true)
        }
        meta.append((BundleFormat.manifestKey, .str(manifestText)))
        meta.append((BundleFormat.signatureKey, .str(BundleFormat.unsigned)))
        for (k, v) in metaExtra { meta.append((k, v)) }
        meta.sort { CodePointOrder.less(JSONString($0.0), JSONString($1.0)) }
        let order = tensors.sorted {
            let a = DType(rawValue: $0.dtype)?.size ?? 1
            let b = DType(rawValue: $1.dtype)?.size ?? 1
            return a != b ? a > b : CodePointOrder.less(JSONString($0.name), JSONString($1.name))
        }
        var header = JSONObject()
        header["__metadata__"] = .object(JSONObject(meta))
        var pos = 0
        for t in order {
            let spec = JSONObject([
                ("dtype", .str(t.dtype)),
                ("shape", .array(t.shape.map { JSONValue.int(Int64($0)) })),
                ("data_offsets", .array([.int(Int64(pos)), .int(Int64(pos + t.data.count))])),
            ])
            header[t.name] = specOverride[t.name] ?? .object(spec)
            pos += t.data.count
        }
        var text = PyJSON.dumps(.object(header))
        if let f = headerText { text = f(text) }
        var hb = Array(text.utf8)
        while hb.count % 8 != 0 { hb.append(0x20) }
        var raw = Data()
        var n = UInt64(hb.count).littleEndian
        withUnsafeBytes(of: &n) { raw.append(contentsOf: $0) }
        raw.append(contentsOf: hb)
        for t in order { raw.append(t.data) }
        if !sign { return raw }
        let needle = Array("\"\(BundleFormat.signatureKey)\":\"\(BundleFormat.unsigned)\"".utf8)
        let at = ParsedBundle.indexOf(raw, needle, from: 8)
        precondition(at >= 0, "no signature field to sign")
        let sig = try Golden.signingKey().signature(for: Data(SHA256.hash(data: raw)))
        let start = at + needle.count - BundleFormat.signatureHexLength - 1
        raw.replaceSubrange(start..<(start + BundleFormat.signatureHexLength), with: Array(Hex.encode(sig).utf8))
        return raw
    }
}

/// java.util.Random (48-bit LCG), so the Kotlin core's randomized tests replay here byte for byte.
struct JavaRandom {
    private var seed: Int64

    init(_ seed: Int64) { self.seed = (seed ^ 0x5_DEEC_E66D) & ((1 << 48) - 1) }

    mutating func next(_ bits: Int) -> Int32 {
        seed = (seed &* 0x5_DEEC_E66D &+ 0xB) & ((1 << 48) - 1)
        return Int32(truncatingIfNeeded: seed >> (48 - bits))
    }

    mutating func nextInt() -> Int32 { next(32) }

    mutating func nextInt(_ bound: Int32) -> Int32 {
        var r = next(31)
        let m = bound &- 1
        if bound & m == 0 {
            return Int32(truncatingIfNeeded: (Int64(bound) &* Int64(r)) >> 31)
        }
        var u = r
        r = u % bound
        while u &- r &+ m < 0 {
            u = next(31)
            r = u % bound
        }
        return r
    }

    mutating func nextBytes(_ bytes: inout [UInt8]) {
        var i = 0
        while i < bytes.count {
            var rnd = nextInt()
            var n = Swift.min(bytes.count - i, 4)
            while n > 0 {
                bytes[i] = UInt8(truncatingIfNeeded: rnd)
                i += 1
                rnd >>= 8
                n -= 1
            }
        }
    }
}
