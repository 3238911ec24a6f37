import CryptoKit
import Foundation
#if canImport(CoreML)
import CoreML
#endif

/// The Core ML swap without re-export: Core ML has no public API to set a loaded model's weights,
/// so a swap writes the bundle's bytes into a **copy** of the compiled model (`.mlmodelc`) at the
/// byte offsets the exporter recorded for each slot in `weights/weight.bin`, then loads the copy
/// with `MLModel(contentsOf:)`.
///
/// `weight.bin` (MIL blob storage, iOS 15+): a 64-byte file header, then per blob a 64-byte
/// metadata block `{u32 0xDEADBEEF, u32 dtype, u64 size, u64 data_offset, ...}` and the data,
/// 64-byte aligned. A slot records `offset` (= data_offset) and `header_offset` (the metadata
/// block). Before writing anything, every tensor's metadata block is checked (magic, dtype, size,
/// data offset), so a compiled model whose layout differs from the exported package is refused
/// instead of being corrupted.
public enum CoreMLSwap {
    public static let blobMagic: UInt32 = 0xDEAD_BEEF
    /// `weight.bin` inside a compiled model directory.
    public static let compiledWeights = "weights/weight.bin"
    /// `weight.bin` inside an `.mlpackage`, and the ML program spec whose hash the fingerprint covers.
    public static let packageWeights = "Data/com.apple.CoreML/weights/weight.bin"
    public static let packageSpec = "Data/com.apple.CoreML/model.mlmodel"

    /// MIL `BlobDataType` codes.
    public static func blobDType(_ d: DType) -> UInt32? {
        switch d {
        case .F16: return 1
        case .F32: return 2
        case .U8: return 3
        case .I8: return 4
        case .BF16: return 5
        default: return nil
        }
    }

    public struct BlobHeader: Equatable, Sendable {
        public let dtype: UInt32
        public let size: UInt64
        public let dataOffset: UInt64
    }

    public static func readBlobHeader(_ weights: ByteSource, at headerOffset: Int) throws -> BlobHeader {
        guard headerOffset >= 0, headerOffset + 24 <= weights.size else {
            throw BundleError(.slot, "weight.bin is truncated (blob header at \(headerOffset))")
        }
        let h = weights.slice(headerOffset, 24)
        if h.u32LE(at: 0) != blobMagic { throw BundleError(.slot, "weight.bin has no blob header at offset \(headerOffset)") }
        return BlobHeader(dtype: h.u32LE(at: 4), size: h.u64LE(at: 8), dataOffset: h.u64LE(at: 16))
    }

    /// Checks that `weights` holds `slot` where the artifact says: blob header at `header_offset`
    /// with the slot's dtype, `nbytes` and `offset`; with `checkDigest`, that the bytes there are
    /// the slot's base value (`sha256`), i.e. this file is the artifact's own, unswapped.
    public static func checkSlot(_ slot: JSONObject, in weights: ByteSource, checkDigest: Bool) throws {
        let name = slot.str("name") ?? "?"
        guard let ho = slot["header_offset"]?.intValue, let off = slot["offset"]?.intValue, let n = slot["nbytes"]?.intValue,
              let dt = slot.str("dtype").flatMap({ DType(rawValue: DType.stName($0)) }), let code = blobDType(dt) else {
            throw BundleError(.slot, "swap slot \(name) has no Core ML blob location (header_offset, offset, nbytes, dtype)")
        }
        let h = try readBlobHeader(weights, at: ho)
        if h.dtype != code || h.size != UInt64(n) || h.dataOffset != UInt64(off) || off < 0 || off + n > weights.size {
            throw BundleError(.slot, "weight.bin blob for \(name) does not match its slot (dtype \(h.dtype), \(h.size) bytes at \(h.dataOffset); "
                + "slot: \(dt.rawValue), \(n) bytes at \(off)); the compiled model is not the exported one")
        }
        if checkDigest, let want = slot.str("sha256"), Hex.sha256(weights.slice(off, n)) != want {
            throw BundleError(.slot, "weight.bin bytes of \(name) are not the artifact's base value (already swapped, or another model)")
        }
    }

    /// Every slot of `artifact` in `weights` (`checkSlot`).
    public static func checkSlots(_ artifact: Artifact, weights: ByteSource, checkDigests: Bool) throws {
        let s = try artifact.slotsByParam()
        for p in s.order { try checkSlot(s.slots[p]!, in: weights, checkDigest: checkDigests) }
    }

    /// Copies the compiled model `pristine` (an `.mlmodelc` directory that is never modified) to
    /// `destination` and writes the bundle's tensors into the copy's `weights/weight.bin`: merged
    /// bundles byte for byte, lora bundles merged on the device from the pristine base values, one
    /// weight at a time. All blob headers are checked before the first write; on any error the
    /// partial copy is deleted and `destination` is untouched. Returns the number of tensors written.
    ///
    /// The copy is a clone on APFS (`FileManager.copyItem` uses `clonefile`), so only the pages
    /// that are rewritten take new space.
    @discardableResult
    public static func writePatchedCopy(of pristine: URL, to destination: URL, bundle vb: VerifiedBundle) throws -> Int {
        if vb.artifact.backendName != "coreml" {
            throw BundleError(.backend, "a Core ML swap needs a coreml artifact, not \(vb.artifact.backendName)")
        }
        let fm = FileManager.default
        let weights: ByteSource
        do {
            weights = try ByteSource.open(pristine.appendingPathComponent(compiledWeights))
        } catch {
            throw BundleError(.io, "no \(compiledWeights) in \(pristine.lastPathComponent)")
        }
        // 1. the plan's locations, checked against the pristine file (nothing written yet)
        let slots = try vb.artifact.slotsByParam().slots
        for p in vb.params {
            guard let slot = slots[p] else { throw BundleError(.slot, "no swap slot for \(p.string)") }
            if !(slot.str("file") ?? "").hasSuffix(compiledWeights) {
                throw BundleError(.slot, "swap slot \(p.string) is not in weight.bin")
            }
            try checkSlot(slot, in: weights, checkDigest: false)
        }
        // 2. clone, patch, move into place
        let parent = destination.deletingLastPathComponent()
        let tmp = parent.appendingPathComponent(".\(destination.lastPathComponent).\(UUID().uuidString).tmp", isDirectory: true)
        try fm.createDirectory(at: parent, withIntermediateDirectories: true)
        try fm.copyItem(at: pristine, to: tmp)
        var written = 0
        do {
            let handle = try FileHandle(forUpdating: tmp.appendingPathComponent(compiledWeights))
            do {
                let base = vb.kind == "lora" ? BaseValues.fromOffsets(weights) : nil
                try SwapPlan.forEach(vb, base: base) { t in
                    guard let off = t.offset, let slot = slots[t.param], slot["nbytes"]?.intValue == t.nbytes else {
                        throw BundleError(.slot, "swap tensor \(t.param.string) does not fit its slot")
                    }
                    try handle.seek(toOffset: UInt64(off))
                    try handle.write(contentsOf: t.data)
                    written += 1
                }
                try handle.synchronize()
                try handle.close()
            } catch {
                try? handle.close()
                throw error
            }
            if fm.fileExists(atPath: destination.path) { try fm.removeItem(at: destination) }
            try fm.moveItem(at: tmp, to: destination)
        } catch {
            try? fm.removeItem(at: tmp)
            throw error
        }
        return written
    }

    /// The artifact fingerprint of an `.mlpackage` as the exporter computes it:
    /// `sha256("coreml\0" + sha256hex(model.mlmodel) + sha256hex(weight.bin without the slot byte ranges))`.
    /// Compare it with `artifact.json`'s `fingerprint` before trusting a package copied to the device.
    public static func fingerprint(package: URL, artifact: Artifact) throws -> String {
        let spec = try ByteSource.open(package.appendingPathComponent(packageSpec))
        let weights = try ByteSource.open(package.appendingPathComponent(packageWeights))
        return try fingerprint(spec: spec, weights: weights, artifact: artifact)
    }

    public static func fingerprint(spec: ByteSource, weights: ByteSource, artifact: Artifact) throws -> String {
        let s = try artifact.slotsByParam()
        var skip: [(Int, Int)] = []
        for p in s.order {
            guard let off = s.slots[p]?["offset"]?.intValue, let n = s.slots[p]?["nbytes"]?.intValue else {
                throw BundleError(.slot, "swap slot \(p.string) has no offset/nbytes")
            }
            skip.append((off, n))
        }
        var outer = SHA256()
        outer.update(data: Array("coreml\0".utf8))
        outer.update(data: Array(Hex.sha256(spec.data).utf8))
        outer.update(data: Array(sha256Skipping(weights, skip).utf8))
        return Hex.encode(outer.finalize())
    }

    /// sha256 (hex) of a file's bytes with the byte ranges `(offset, length)` left out
    /// (Python `exporters.sha256_file(path, skip)`; overlapping ranges are merged).
    public static func sha256Skipping(_ file: ByteSource, _ skip: [(Int, Int)]) -> String {
        var h = SHA256()
        var pos = 0
        file.data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            for (off, n) in skip.sorted(by: { $0.0 < $1.0 }) {
                let start = Swift.min(Swift.max(off, pos), raw.count)
                if start > pos { h.update(bufferPointer: UnsafeRawBufferPointer(rebasing: raw[pos..<start])) }
                pos = Swift.max(pos, Swift.min(off + n, raw.count))
            }
            if pos < raw.count { h.update(bufferPointer: UnsafeRawBufferPointer(rebasing: raw[pos..<raw.count])) }
        }
        return Hex.encode(h.finalize())
    }

    #if canImport(CoreML)
    /// Compiles an `.mlpackage` (Core ML's own compiler on the device) and moves the result to
    /// `destination` (an `.mlmodelc` path). Done once per artifact; swaps copy the result.
    public static func compile(package: URL, to destination: URL) async throws {
        let compiled = try await MLModel.compileModel(at: package)
        let fm = FileManager.default
        try fm.createDirectory(at: destination.deletingLastPathComponent(), withIntermediateDirectories: true)
        if fm.fileExists(atPath: destination.path) { try fm.removeItem(at: destination) }
        try fm.moveItem(at: compiled, to: destination)
    }

    /// Loads a (patched) compiled model. Each bundle has its own directory: Core ML keeps
    /// device-specialized compilations (e.g. for the Neural Engine) per model, so a path is never
    /// reused for other weights.
    public static func load(_ compiledModel: URL, computeUnits: MLComputeUnits = .cpuAndNeuralEngine) throws -> MLModel {
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        return try MLModel(contentsOf: compiledModel, configuration: config)
    }
    #endif
}
