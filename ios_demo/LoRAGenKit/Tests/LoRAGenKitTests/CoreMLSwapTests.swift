import Foundation
import XCTest
@testable import LoRAGenKit

/// The Core ML swap on a synthetic compiled model: `weights/weight.bin` laid out as MIL blob
/// storage at the golden coreml artifact's slot offsets (64-byte file header; per slot a 64-byte
/// blob header {0xDEADBEEF, dtype 1 = fp16, size, data offset} at `header_offset` and the base
/// value at `offset`). Core ML itself is not needed: the test checks the bytes the swap writes.
/// The expected digests were computed independently in Python from tests/golden (the
/// expected/merged-*.safetensors tensors written at the slot offsets).
final class CoreMLSwapTests: XCTestCase {
    static let baseWeightsSHA = "5302dd708d41178a17a1b0a90fa346d6796ef17a15ad54c9ebcb1366b8e125cb"
    static let mergedWeightsSHA = "55b10bb3d83c92ae5cccedbee4875bf77ae7623c27ddd6606b0d968762e750de"
    static let loraWeightsSHA = "a99bbf76490f3a18ecb7ab689defab0607f62e5da5bdc7b487a1e9ac1da89334"
    /// sha256 of weight.bin without the slot byte ranges: the same before and after any swap.
    static let nonSwapSHA = "11dbb04279fd3616784f0621aefe09b81f5b183daa5132f8031b7f3a08b36917"
    /// The exporter's fingerprint formula over a package whose model.mlmodel is `specText`.
    static let specText = "synthetic model spec\n"
    static let packageFingerprint = "35f67dd8e32b28ecc1f9a32367d1fef3d3970b9dbca90cc89ee0e1f8113a7fb1"

    private var tmp: URL!
    private var art: Artifact!
    private var pristine: URL!

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("loragenkit-coreml-\(UUID().uuidString)")
        art = try Golden.artifact("coreml")
        pristine = tmp.appendingPathComponent("base/model.mlmodelc")
        let base = try Golden.safetensors("base/coreml.safetensors")
        try makeCompiledModel(at: pristine, weights: try Self.weightBin(art) { base.tensorData($0)! })
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: tmp)
    }

    static func weightBin(_ art: Artifact, _ value: (JSONString) throws -> Data) throws -> Data {
        let s = try art.slotsByParam()
        var length = 0
        for p in s.order {
            let slot = s.slots[p]!
            length = Swift.max(length, slot["offset"]!.intValue! + (slot["nbytes"]!.intValue! + 63) / 64 * 64)
        }
        var b = [UInt8](repeating: 0, count: length)
        func put(_ at: Int, _ v: UInt64, _ n: Int) { for i in 0..<n { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) } }
        put(0, UInt64(s.order.count), 4)
        put(4, 2, 4) // storage version
        for p in s.order {
            let slot = s.slots[p]!
            let ho = slot["header_offset"]!.intValue!
            let off = slot["offset"]!.intValue!
            let n = slot["nbytes"]!.intValue!
            put(ho, 0xDEAD_BEEF, 4)
            put(ho + 4, 1, 4) // fp16
            put(ho + 8, UInt64(n), 8)
            put(ho + 16, UInt64(off), 8)
            let d = try value(p)
            XCTAssertEqual(d.count, n)
            b.replaceSubrange(off..<(off + n), with: [UInt8](d))
        }
        return Data(b)
    }

    private func makeCompiledModel(at dir: URL, weights: Data) throws {
        let fm = FileManager.default
        try fm.createDirectory(at: dir.appendingPathComponent("weights"), withIntermediateDirectories: true)
        try weights.write(to: dir.appendingPathComponent(CoreMLSwap.compiledWeights))
        try Data("program(1.3) {}\n".utf8).write(to: dir.appendingPathComponent("model.mil"))
        try Data([1, 2, 3, 4]).write(to: dir.appendingPathComponent("coremldata.bin"))
    }

    private func sha(_ url: URL) throws -> String { Hex.sha256(try Data(contentsOf: url)) }

    func testSyntheticBaseModelMatchesTheArtifact() throws {
        let w = pristine.appendingPathComponent(CoreMLSwap.compiledWeights)
        XCTAssertEqual(try sha(w), Self.baseWeightsSHA)
        // every slot: blob header where the artifact says, and the base value's sha256
        XCTAssertNoThrow(try CoreMLSwap.checkSlots(art, weights: try ByteSource.open(w), checkDigests: true))
        XCTAssertEqual(CoreMLSwap.sha256Skipping(try ByteSource.open(w), try skips()), Self.nonSwapSHA)
    }

    private func skips() throws -> [(Int, Int)] {
        let s = try art.slotsByParam()
        return s.order.map { (s.slots[$0]!["offset"]!.intValue!, s.slots[$0]!["nbytes"]!.intValue!) }
    }

    private func patched(_ name: String) throws -> (URL, Int) {
        let vb = try verify(try Golden.bundle(name), art, try Golden.publicKey())
        let dest = tmp.appendingPathComponent("swapped/\(name).mlmodelc")
        let n = try CoreMLSwap.writePatchedCopy(of: pristine, to: dest, bundle: vb)
        return (dest, n)
    }

    func testMergedBundleIsWrittenAtTheSlotOffsets() throws {
        let (dest, n) = try patched("coreml-merged")
        XCTAssertEqual(n, 6)
        let w = dest.appendingPathComponent(CoreMLSwap.compiledWeights)
        XCTAssertEqual(try sha(w), Self.mergedWeightsSHA)
        XCTAssertEqual(CoreMLSwap.sha256Skipping(try ByteSource.open(w), try skips()), Self.nonSwapSHA)
        // each slot holds the expected tensor; the headers are intact, the base digests no longer match
        let expected = try Golden.safetensors("expected/merged-coreml-merged.safetensors")
        let weights = try ByteSource.open(w)
        let s = try art.slotsByParam()
        for p in s.order {
            let slot = s.slots[p]!
            XCTAssertEqual(weights.slice(slot["offset"]!.intValue!, slot["nbytes"]!.intValue!).byteArray, expected.tensorData(p)!.byteArray)
        }
        XCTAssertNoThrow(try CoreMLSwap.checkSlots(art, weights: weights, checkDigests: false))
        expectCode("slot") { try CoreMLSwap.checkSlots(self.art, weights: weights, checkDigests: true) }
        // the rest of the compiled model is copied unchanged, and the pristine model is untouched
        XCTAssertEqual(try Data(contentsOf: dest.appendingPathComponent("model.mil")), Data("program(1.3) {}\n".utf8))
        XCTAssertEqual(try Data(contentsOf: dest.appendingPathComponent("coremldata.bin")), Data([1, 2, 3, 4]))
        XCTAssertEqual(try sha(pristine.appendingPathComponent(CoreMLSwap.compiledWeights)), Self.baseWeightsSHA)
    }

    func testLoraBundleIsMergedFromThePristineWeights() throws {
        // base values come from the pristine weight.bin; the fp16 merge equals Python's bit for bit
        let (dest, n) = try patched("coreml-lora")
        XCTAssertEqual(n, 6)
        XCTAssertEqual(try sha(dest.appendingPathComponent(CoreMLSwap.compiledWeights)), Self.loraWeightsSHA)
        // swapping again (another bundle to another path, or the same path) always starts from the pristine copy
        let (again, _) = try patched("coreml-merged")
        XCTAssertEqual(try sha(again.appendingPathComponent(CoreMLSwap.compiledWeights)), Self.mergedWeightsSHA)
        let (same, _) = try patched("coreml-lora")
        XCTAssertEqual(try sha(same.appendingPathComponent(CoreMLSwap.compiledWeights)), Self.loraWeightsSHA)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: tmp.appendingPathComponent("swapped").path)
        XCTAssertEqual(leftovers.sorted(), ["coreml-lora.mlmodelc", "coreml-merged.mlmodelc"])
    }

    func testLayoutMismatchWritesNothing() throws {
        // a compiled model whose blob for one slot is elsewhere: refused before any write
        var w = try Data(contentsOf: pristine.appendingPathComponent(CoreMLSwap.compiledWeights))
        w[64 + 16] ^= 0x40 // data_offset of the first slot's blob header
        let other = tmp.appendingPathComponent("other/model.mlmodelc")
        try makeCompiledModel(at: other, weights: w)
        let vb = try verify(try Golden.bundle("coreml-merged"), art, try Golden.publicKey())
        let dest = tmp.appendingPathComponent("swapped/x.mlmodelc")
        expectCode("slot") { _ = try CoreMLSwap.writePatchedCopy(of: other, to: dest, bundle: vb) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dest.path))
        let parent = dest.deletingLastPathComponent().path
        XCTAssertEqual((try? FileManager.default.contentsOfDirectory(atPath: parent)) ?? [], [])
        // a bundle for another backend is refused too
        let et = try verify(try Golden.bundle("executorch-merged"), try Golden.artifact("executorch"), try Golden.publicKey())
        expectCode("backend") { _ = try CoreMLSwap.writePatchedCopy(of: self.pristine, to: dest, bundle: et) }
    }

    func testPackageFingerprintFormula() throws {
        let pkg = tmp.appendingPathComponent("model.mlpackage")
        let weightsURL = pkg.appendingPathComponent(CoreMLSwap.packageWeights)
        try FileManager.default.createDirectory(at: weightsURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: pristine.appendingPathComponent(CoreMLSwap.compiledWeights), to: weightsURL)
        try Data(Self.specText.utf8).write(to: pkg.appendingPathComponent(CoreMLSwap.packageSpec))
        XCTAssertEqual(try CoreMLSwap.fingerprint(package: pkg, artifact: art), Self.packageFingerprint)
        // the fingerprint leaves the swap slots out: a patched weight.bin has the same one
        let (dest, _) = try patched("coreml-merged")
        let swapped = try ByteSource.open(dest.appendingPathComponent(CoreMLSwap.compiledWeights))
        XCTAssertEqual(try CoreMLSwap.fingerprint(spec: ByteSource.of(Data(Self.specText.utf8)), weights: swapped, artifact: art),
                       Self.packageFingerprint)
    }
}
