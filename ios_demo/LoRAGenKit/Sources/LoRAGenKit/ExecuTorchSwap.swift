import Foundation

/// The ExecuTorch swap without re-export: the program (`model.pte`) reads its weights from named
/// data files; the artifact splits them into `foundation.ptd` (never swapped) and `swap.ptd` (one
/// blob per swap slot, keyed by the slot's `key`). A bundle becomes a new `.ptd` with the same
/// keys and the bundle's bytes, and the runtime loads the program with
/// `[foundation.ptd, <bundle>.ptd]` instead of `[foundation.ptd, swap.ptd]`
/// (`Module(filePath:dataFilePaths:)` in ExecuTorch's Swift API, executorch >= 1.0; see the app's
/// `ExecuTorchEngine`, built only where the ExecuTorch package is linked).
public enum ExecuTorchSwap {
    /// Writes the bundle's swap `.ptd` to `destination`. lora bundles are merged on the device from
    /// the artifact's own `swap.ptd` (`artifactSwapPtd`). Returns the number of tensors written.
    @discardableResult
    public static func writeSwapPtd(bundle vb: VerifiedBundle, artifactSwapPtd: URL, to destination: URL) throws -> Int {
        if vb.artifact.backendName != "executorch" {
            throw BundleError(.backend, "an ExecuTorch swap needs an executorch artifact, not \(vb.artifact.backendName)")
        }
        var base: BaseValues?
        if vb.kind == "lora" {
            let src = try ByteSource.open(artifactSwapPtd)
            do {
                base = BaseValues.fromPtd(try PtdFile.read(src))
            } catch let e as PtdError {
                throw BundleError(.build, "\(artifactSwapPtd.lastPathComponent): \(e.message)")
            }
        }
        let plan = try SwapPlan.build(vb, base: base)
        let tmp = destination.deletingLastPathComponent().appendingPathComponent(".\(destination.lastPathComponent).tmp")
        try PtdWriter.write(try PtdWriter.entries(for: plan), to: tmp)
        let fm = FileManager.default
        if fm.fileExists(atPath: destination.path) { try fm.removeItem(at: destination) }
        try fm.moveItem(at: tmp, to: destination)
        return plan.count
    }
}
