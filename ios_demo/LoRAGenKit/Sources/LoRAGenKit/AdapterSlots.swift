import Foundation

/// One run-time adapter slot value: `name` (the ONNX input; nil for ExecuTorch), fp32 `data` of `shape`.
public struct SlotValue: Sendable {
    public let name: String?
    public let shape: [Int]
    public let data: [Float]
}

/// Run-time adapter slots (`artifact.json` `adapter_slots`, an export with `--adapter-slots R`): the
/// values that take a lora bundle into a loaded model without touching its weights, Python's
/// `exporters.pipeline.adapter_slot_inputs` bit for bit, the same as the Kotlin core's
/// `AdapterSlots`. For each slot module, in the block's `modules` order: A `[R, in]` and
/// `scale * B` `[out, R]` (fp32 products of the fp32 factors and the fp32 scale `alpha / r`),
/// zero-padded to rank R; zeros for a module the bundle does not adapt.
public enum AdapterSlots {
    /// The slot values of the verified lora bundle `vb` for its artifact's slots.
    public static func values(_ vb: VerifiedBundle) throws -> [SlotValue] {
        guard vb.kind == "lora" else {
            throw BundleError(.usage, "a merged bundle holds merged weights, not LoRA factors: adapter slots take a lora bundle")
        }
        let slots = try block(vb.artifact)
        guard let lora = vb.lora, let rv = lora["r"]?.intValue, rv > 0, let alpha = lora["alpha"]?.number else {
            throw BundleError(.manifest, "lora bundle manifest has no integer rank and alpha")
        }
        let scale = Float(alpha / Double(rv))
        guard let entries = vb.manifest.obj("tensors") else { throw BundleError(.manifest, "bundle has no tensors") }
        let modules = entries.entries.map { $0.key }.filter { $0.hasSuffix(".lora_A") }.map { $0.droppingSuffix(".lora_A").string }
        if let unknown = modules.filter({ !slots.modules.contains($0) }).sorted(by: { CodePointOrder.less(JSONString($0), JSONString($1)) }).first {
            throw BundleError(.input, "the adapter adapts \(unknown), which has no adapter slot in this artifact")
        }
        guard rv <= slots.rank else {
            throw BundleError(.input, "the adapter has rank \(rv); this artifact's slots hold rank \(slots.rank) at most")
        }
        var out: [SlotValue] = []
        for (i, m) in slots.modules.enumerated() {
            let (outF, inF) = slots.shapes[i]
            var a = [Float](repeating: 0, count: slots.rank * inF)
            var b = [Float](repeating: 0, count: outF * slots.rank)
            if modules.contains(m) {
                let fa = try factor(vb, m + ".lora_A")
                let fb = try factor(vb, m + ".lora_B")
                guard fa.count == rv * inF, fb.count == outF * rv else {
                    throw BundleError(.input, "LoRA factors of \(m) do not have the shapes A [\(rv), \(inF)], B [\(outF), \(rv)] of its slot")
                }
                a.replaceSubrange(0..<fa.count, with: fa) // rows 0 ..< r of A [R, in]
                for row in 0..<outF { for k in 0..<rv { b[row * slots.rank + k] = fb[row * rv + k] * scale } }
            }
            out.append(SlotValue(name: slots.names?[2 * i], shape: [slots.rank, inF], data: a))
            out.append(SlotValue(name: slots.names?[2 * i + 1], shape: [outF, slots.rank], data: b))
        }
        return out
    }

    /// Whether `artifact` was exported with run-time adapter slots.
    public static func present(_ artifact: Artifact) -> Bool { artifact.json.obj("adapter_slots") != nil }

    private struct Block {
        let rank: Int
        let modules: [String]
        let shapes: [(Int, Int)]
        let names: [String]?
    }

    private static func block(_ artifact: Artifact) throws -> Block {
        guard let o = artifact.json.obj("adapter_slots") else {
            throw BundleError(.artifact, "artifact has no adapter slots; export it with --adapter-slots R")
        }
        guard let rank = o["rank"]?.intValue, rank > 0,
              let modules = o["modules"]?.arrayValue?.map({ $0.stringValue }), !modules.contains(where: { $0 == nil }),
              let shapes = o["shapes"]?.arrayValue?.map({ $0.arrayValue?.map { $0.intValue ?? -1 } ?? [] }),
              shapes.allSatisfy({ $0.count == 2 && $0[0] > 0 && $0[1] > 0 }), shapes.count == modules.count else {
            throw BundleError(.artifact, "artifact adapter_slots is not a rank, modules and [out, in] shapes")
        }
        let names = o["input_names"]?.arrayValue?.map { $0.stringValue ?? "" }
        if let names = names, names.count != 2 * modules.count || names.contains("") {
            throw BundleError(.artifact, "artifact adapter_slots input_names do not name A and B of each module")
        }
        return Block(rank: rank, modules: modules.map { $0! }, shapes: shapes.map { ($0[0], $0[1]) }, names: names)
    }

    private static func factor(_ vb: VerifiedBundle, _ name: String) throws -> [Float] {
        guard let te = vb.parsed.tensors[JSONString(name)], let d = vb.parsed.container.tensorData(name) else {
            throw BundleError(.missingTensor, "lora bundle has no tensor \(name)")
        }
        return try LoraMerge.toFloats(d, te.dtype)
    }
}
