import Foundation
import XCTest
@testable import LoRAGenKit

/// Random damage to valid bundles with the Kotlin core's seeds (java.util.Random replayed by
/// `JavaRandom`, so the damaged files are byte-identical to CorruptionTest.kt's): every outcome is a
/// `BundleError` with a documented code, or a bundle that verifies with exactly the original
/// tensors; and the tally of outcomes is the one Kotlin and Python give, file by file.
final class CorruptionTests: XCTestCase {
    private let codes = Set(ErrorCode.allCases.map { $0.rawValue }).subtracting(["io", "artifact", "merge", "build", "encoding"])

    private func tensorDigests(_ vb: VerifiedBundle) -> [String: String] {
        var out: [String: String] = [:]
        for e in vb.parsed.container.entries { out[e.name.string] = vb.parsed.container.tensorSHA256(e.name) }
        return out
    }

    private func outcome(_ raw: [UInt8], _ art: Artifact, withKey: Bool, _ original: [String: String]) throws -> String {
        let key = try Golden.publicKey()
        do {
            let vb = try BundleVerifier.verify(ByteSource.of(raw), artifact: art, publicKey: withKey ? key : nil,
                                               requireSignature: withKey)
            XCTAssertEqual(tensorDigests(vb), original, "a damaged bundle verified with different tensors")
            return "valid"
        } catch let e as BundleError {
            XCTAssertTrue(codes.contains(e.code), "undocumented code \(e.code)")
            return e.code
        }
    }

    private func fuzz(_ name: String, _ backend: String, seed: Int64, rounds: Int, withKey: Bool) throws -> [String: Int] {
        let good = try Golden.bundle(name).byteArray
        let art = try Golden.artifact(backend)
        let original = tensorDigests(try verify(Data(good), art, withKey ? try Golden.publicKey() : nil, requireSignature: withKey))
        var rnd = JavaRandom(seed)
        var tally: [String: Int] = [:]
        for _ in 0..<rounds {
            var raw = good
            let flips = 1 + Int(rnd.nextInt(4))
            for _ in 0..<flips {
                let at = Int(rnd.nextInt(Int32(raw.count)))
                raw[at] ^= UInt8(1) << UInt8(rnd.nextInt(8))
            }
            let o = try outcome(raw, art, withKey: withKey, original)
            tally[o, default: 0] += 1
        }
        print("  fuzz \(name) key=\(withKey): \(tally.sorted { $0.key < $1.key })")
        return tally
    }

    func testBitFlipsWithKey() throws {
        let t = try fuzz("executorch-merged", "executorch", seed: 20_260_101, rounds: 1500, withKey: true)
        XCTAssertEqual(t.values.reduce(0, +), 1500)
        XCTAssertNil(t["valid"], "signed bundles: no damaged copy may verify")
        XCTAssertEqual(t, ["bad_signature": 815, "data_offsets": 5, "duplicate_name": 2, "format": 5, "header_encoding": 227,
                           "header_json": 305, "header_length": 7, "manifest": 49, "metadata": 7, "signature_field": 28,
                           "tensor_header": 43, "version": 7])
    }

    func testBitFlipsWithoutKey() throws {
        // an unsigned bundle admitted without a key: the tensor digests still guard the data, so
        // whatever verifies carries the original tensors (flips in e.g. the creation time can verify);
        // key_required: flips that turn a '0' of the all-zero signature into another hex digit
        let t = try fuzz("unsigned", "executorch", seed: 7, rounds: 1500, withKey: false)
        XCTAssertEqual(t.values.reduce(0, +), 1500)
        XCTAssertEqual(t, ["backend": 4, "data_offsets": 9, "digest": 479, "duplicate_name": 2, "fingerprint": 20, "format": 11,
                           "header_encoding": 235, "header_json": 345, "header_length": 2, "key_required": 28, "kind": 1,
                           "manifest": 210, "metadata": 2, "signature_field": 17, "slot": 78, "tensor_header": 39, "valid": 11,
                           "version": 7])
    }

    func testEveryPrefixIsATypedError() throws {
        let good = try Golden.bundle("coreml-merged").byteArray
        let art = try Golden.artifact("coreml")
        let key = try Golden.publicKey()
        let n = Int(Data(good).u64LE(at: 0))
        for len in 0..<good.count {
            let code = try codeOf { _ = try verify(Data(good[0..<len]), art, key) }
            let want = len < 8 ? "truncated" : (len < 8 + n ? "header_length" : "data_offsets")
            XCTAssertEqual(code, want, "prefix of \(len) bytes")
        }
    }

    func testRandomHeaderLengthsAndGarbage() throws {
        var rnd = JavaRandom(99)
        let art = try Golden.artifact("executorch")
        var tally: [String: Int] = [:]
        for i in 0..<2000 {
            let size = 8 + Int(rnd.nextInt(200))
            var raw = [UInt8](repeating: 0, count: size)
            rnd.nextBytes(&raw)
            // half the time a plausible header length, the rest random 64-bit values
            if i % 2 == 0 {
                let n = UInt64(rnd.nextInt(Int32(size - 7)))
                for k in 0..<8 { raw[k] = UInt8(truncatingIfNeeded: n >> (8 * UInt64(k))) }
            }
            let o = try outcome(raw, art, withKey: true, [:])
            tally[o, default: 0] += 1
        }
        XCTAssertEqual(tally, ["header_encoding": 943, "header_json": 57, "header_length": 1000])
    }
}
