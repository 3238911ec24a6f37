import Foundation

/// The ExecuTorch swap without re-export: the program (`model.pte`) reads its weights by key from
/// one named data file, `model.ptd` (the layout ExecuTorch's stock runners load). Each swap slot is
/// one segment of it (`key` and `offset` in `artifact.json`). A bundle becomes a byte copy of
/// `model.ptd` with each swapped tensor's bytes written over its slot's segment: same keys, same
/// sizes, same layouts, so the program never changes and the copy equals Python's `apply_swap`
/// output byte for byte (the Kotlin core's `PtdWriter.writeSwapped`). The runtime loads the program
/// with `[<bundle>.ptd]` instead of `[model.ptd]` (`Module(filePath:dataFilePaths:)` in ExecuTorch's
/// Swift API, executorch >= 1.0; see the app's `ExecuTorchEngine`, built only where the ExecuTorch
/// package is linked).
public enum ExecuTorchSwap {
    /// Bytes copied per write when streaming the unchanged parts of `model.ptd`.
    static let chunkSize = 1 << 24

    /// Writes the bundle's data file to `destination`: the artifact's `model.ptd` (`artifactPtd`)
    /// with the bundle's tensors over their slots' segments. lora bundles are merged on the device
    /// from the base values in that same `model.ptd`. Returns the number of tensors swapped.
    @discardableResult
    public static func writeSwapped(bundle vb: VerifiedBundle, artifactPtd: URL, to destination: URL) throws -> Int {
        if vb.artifact.backendName != "executorch" {
            throw BundleError(.backend, "an ExecuTorch swap needs an executorch artifact, not \(vb.artifact.backendName)")
        }
        let data = try ByteSource.open(artifactPtd) // the artifact's one data file
        do {
            var base: BaseValues?
            if vb.kind == "lora" { base = BaseValues.fromPtd(try PtdFile.read(data)) }
            let plan = try SwapPlan.build(vb, base: base)
            try writeSwapped(base: data, plan: plan, to: destination)
            return plan.count
        } catch let e as PtdError {
            throw BundleError(.build, "\(artifactPtd.lastPathComponent): \(e.message)")
        }
    }

    /// A byte copy of `base` (the artifact's `model.ptd`) with each tensor's bytes written over its
    /// slot's segment, written to a temporary file beside `destination` and then moved there. Keys,
    /// layouts and every other byte are unchanged. Each tensor's key must name a segment of exactly
    /// its size; when the slot records `offset`, it must be where that segment starts; no two
    /// tensors may share a segment (otherwise `BundleError` with code `slot`, nothing written).
    /// An unreadable `base` throws `PtdError`.
    public static func writeSwapped(base: ByteSource, plan: [SwapTensor], to destination: URL) throws {
        let ptd = try PtdFile.read(base)
        var patches: [Int: SwapTensor] = [:]
        for t in plan {
            guard let key = t.key else { throw BundleError(.slot, "swap slot of \(t.param.string) has no data key") }
            guard let idx = ptd.segmentIndex(key) else {
                throw BundleError(.slot, "the artifact's .ptd has no entry \(key) for \(t.param.string)")
            }
            let seg = ptd.segments[idx]
            let at = ptd.segmentBaseOffset + seg.offset
            if seg.size != t.nbytes {
                throw BundleError(.slot, "\(t.param.string): .ptd segment holds \(seg.size) bytes, the tensor has \(t.nbytes)")
            }
            if let o = t.offset, o != at {
                throw BundleError(.slot, "\(t.param.string): slot offset \(o) is not its .ptd segment's offset \(at)")
            }
            if patches.updateValue(t, forKey: at) != nil {
                throw BundleError(.slot, "two swap tensors share the .ptd segment of \(t.param.string)")
            }
        }
        let fm = FileManager.default
        let tmp = destination.deletingLastPathComponent().appendingPathComponent(".\(destination.lastPathComponent).tmp")
        if fm.fileExists(atPath: tmp.path) { try fm.removeItem(at: tmp) }
        guard fm.createFile(atPath: tmp.path, contents: nil) else { throw BundleError(.io, "cannot create \(tmp.path)") }
        do {
            let h = try FileHandle(forWritingTo: tmp)
            defer { try? h.close() }
            var pos = 0
            func copy(to end: Int) throws {
                while pos < end {
                    let n = Swift.min(end - pos, ExecuTorchSwap.chunkSize)
                    try h.write(contentsOf: base.slice(pos, n))
                    pos += n
                }
            }
            for at in patches.keys.sorted() {
                let t = patches[at]!
                try copy(to: at)
                try h.write(contentsOf: t.data)
                pos = at + t.nbytes
            }
            try copy(to: base.size)
            try h.synchronize()
        } catch {
            try? fm.removeItem(at: tmp)
            throw error
        }
        if fm.fileExists(atPath: destination.path) { try fm.removeItem(at: destination) }
        try fm.moveItem(at: tmp, to: destination)
    }
}
