import CryptoKit
import Foundation
import XCTest
@testable import LoRAGenKit

/// The structural and manifest mutations of tests/golden/mutations.py (seeded sample in expected.json
/// "mutations"), rebuilt here and re-signed with the golden test key: each must get exactly the verdict
/// Python's reader (and the Kotlin core's MutationTest) gives. CryptoKit's Ed25519 signatures are
/// randomized, so the rebuild is compared before signing (`unsigned_sha256`).
final class MutationTests: XCTestCase {
    private struct Base { let headerText: [UInt8]; let data: [UInt8] }

    private func base(_ name: String) throws -> Base {
        let raw = try Golden.bundle(name).byteArray
        let n = Int(Data(raw).u64LE(at: 0))
        var text = String(decoding: raw[8..<(8 + n)], as: UTF8.self)
        while text.hasSuffix(" ") { text.removeLast() }
        let sig = try ParsedBundle.parse(ByteSource.of(raw)).signatureHex
        if let r = text.range(of: "\"\(BundleFormat.signatureKey)\":\"\(sig)\"") {
            text.replaceSubrange(r, with: "\"\(BundleFormat.signatureKey)\":\"\(BundleFormat.unsigned)\"")
        }
        return Base(headerText: Array(text.utf8), data: Array(raw[(8 + n)...]))
    }

    private func int(_ v: JSONValue?) -> Int { v!.intValue! }

    /// Python `mutations.from_vector` (the header is ASCII: character offsets are byte offsets).
    private func rebuild(_ v: JSONObject, sign: Bool) throws -> [UInt8] {
        let b = try base(v.str("base")!)
        let h = v.obj("header")!
        let hat = int(h["at"]), hcut = int(h["cut"])
        var hb = Array(b.headerText[0..<hat]) + Array(h.str("insert")!.utf8) + Array(b.headerText[(hat + hcut)...])
        let d = v.obj("data")!
        let dat = int(d["at"]), dcut = int(d["cut"])
        let data = Array(b.data[0..<dat]) + Array(Hex.decode(d.str("insert")!)!) + Array(b.data[(dat + dcut)...])
        while hb.count % 8 != 0 { hb.append(0x20) }
        var raw = withUnsafeBytes(of: UInt64(hb.count).littleEndian) { Array($0) } + hb + data
        let signature = v.str("signature")!
        if !sign || signature == "zero" { return raw }
        let needle = Array("\"\(BundleFormat.signatureKey)\":\"\(BundleFormat.unsigned)\"".utf8)
        let at = ParsedBundle.indexOf(Data(raw[0..<(8 + hb.count)]), needle, from: 8)
        if at < 0 { return raw }
        var sig = signature
        if signature == "key" { sig = Hex.encode(try Golden.signingKey().signature(for: Data(SHA256.hash(data: raw)))) }
        let start = at + needle.count - BundleFormat.signatureHexLength - 1
        raw.replaceSubrange(start..<(start + BundleFormat.signatureHexLength), with: Array(sig.utf8))
        return raw
    }

    func testEveryMutationGetsPythonsVerdict() throws {
        guard case .array(let vs)? = try Golden.expected()["mutations"] else { return XCTFail("no mutations in expected.json") }
        XCTAssertEqual(vs.count, 240)
        for (i, item) in vs.enumerated() {
            let v = item.objectValue!
            XCTAssertEqual(Hex.sha256(try rebuild(v, sign: false)), v.str("unsigned_sha256"), "vector \(i) rebuilt byte for byte")
            let art = try Golden.artifact(String(v.str("base")!.split(separator: "-")[0]))
            var key: Curve25519.Signing.PublicKey? = nil
            if v["pubkey"]?.boolValue == true { key = try Golden.publicKey() }
            let got = try codeOf {
                _ = try verify(Data(try rebuild(v, sign: true)), art, key, requireSignature: v["allow_unsigned"]?.boolValue != true)
            }
            XCTAssertEqual(got, v.str("code"), "vector \(i) (\(v.str("family") ?? "")) of \(v.str("base") ?? "")")
        }
    }
}
