import Foundation

/// One replacement tensor: where the backend keeps it (`locator`: `file` plus `key` and/or
/// `offset`, `header_offset`) and its new bytes (`data`: little-endian, C order, slot dtype).
///
/// - Core ML: write `data` at byte `offset` of a copy of `weights/weight.bin` (`CoreMLSwap`).
/// - ExecuTorch: write `data` over the segment of data key `key` in a copy of `model.ptd` (`ExecuTorchSwap`).
/// - ONNX: the external initializer named `key` (not used on iOS, see README).
public struct SwapTensor: @unchecked Sendable {
    public let param: JSONString
    public let locator: JSONObject
    public let dtype: DType
    public let shape: [Int]
    /// For merged bundles a view into the (mapped) bundle; for lora bundles the merged result.
    public let data: Data

    public init(param: JSONString, locator: JSONObject, dtype: DType, shape: [Int], data: Data) {
        self.param = param
        self.locator = locator
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }

    public var key: String? { locator.str("key") }
    public var file: String? { locator.str("file") }
    public var offset: Int? { locator["offset"]?.intValue }
    public var headerOffset: Int? { locator["header_offset"]?.intValue }
    public var nbytes: Int { data.count }

    public func sha256() -> String { Hex.sha256(data) }
}

/// The base (the artifact's own) value of a swappable tensor, needed to merge a lora bundle on
/// the device: `get(param, slot)` returns its bytes in the slot dtype, or nil if unknown.
public struct BaseValues: @unchecked Sendable {
    public let get: (JSONString, JSONObject) throws -> Data?

    public init(_ get: @escaping (JSONString, JSONObject) throws -> Data?) { self.get = get }

    /// From a safetensors file keyed by parameter name (e.g. tests/golden/base/...).
    public static func fromSafetensors(_ f: SafetensorsFile) -> BaseValues {
        BaseValues { p, _ in f.tensorData(p) }
    }

    /// A file holding each slot at its `offset` with `nbytes`: Core ML's `weights/weight.bin`
    /// (of the pristine compiled model) or ONNX's `swap.onnx.data`.
    public static func fromOffsets(_ file: ByteSource) -> BaseValues {
        BaseValues { _, slot in
            guard let off = slot["offset"]?.intValue, let n = slot["nbytes"]?.intValue,
                  off >= 0, n >= 0, off <= file.size - n else { return nil }
            return file.slice(off, n)
        }
    }

    /// ExecuTorch: the artifact's `model.ptd`, each slot under its data `key`.
    public static func fromPtd(_ ptd: PtdFile) -> BaseValues {
        BaseValues { _, slot in slot.str("key").flatMap { ptd.buffer($0) } }
    }
}

public enum SwapPlan {
    /// Parameter -> replacement for every tensor the bundle swaps, sorted by parameter name
    /// (Python `core.swap_tensors`). merged: the bundle's tensors (views, no copy). lora:
    /// W + scale * (B @ A) merged here (`LoraMerge`) from `base`, in the slot dtype.
    public static func build(_ vb: VerifiedBundle, base: BaseValues? = nil) throws -> [SwapTensor] {
        var out: [SwapTensor] = []
        try forEach(vb, base: base) { out.append($0) }
        return out
    }

    /// `build`, one tensor at a time in the same order, so a large lora bundle never holds more
    /// than one merged weight in memory (the Core ML swap streams through this).
    public static func forEach(_ vb: VerifiedBundle, base: BaseValues?, _ body: (SwapTensor) throws -> Void) throws {
        guard let entries = vb.manifest.obj("tensors") else { throw BundleError(.build, "bundle has no tensors") }
        let slots = try vb.artifact.slotsByParam().slots
        if vb.kind == "merged" {
            var items: [(JSONString, JSONString)] = [] // (param, tensor name)
            for (name, ev) in entries.entries {
                guard let p = ev.objectValue?["param"]?.jsonString else { continue }
                items.append((p, name))
            }
            items.sort { CodePointOrder.less($0.0, $1.0) }
            for (param, name) in items {
                guard let te = vb.parsed.tensors[name], let slot = slots[param], let data = vb.parsed.container.tensorData(name) else {
                    throw BundleError(.build, "tensor \(name.string) has no swap slot")
                }
                try body(SwapTensor(param: param, locator: Artifact.locator(slot), dtype: te.dtype, shape: te.shape, data: data))
            }
            return
        }
        guard let base = base else {
            throw BundleError(.build, "a lora bundle needs the artifact's base values to merge on the device")
        }
        guard let lora = vb.lora, let rv = lora["r"]?.number, let alpha = lora["alpha"]?.number,
              rv.isFinite, rv >= 1, rv < 1e9 else {
            throw BundleError(.build, "lora bundle without a usable r and alpha")
        }
        // Python: LoraAdapter(r=int(r), alpha=float(alpha)).scale (fp64), rounded once to fp32 here
        let r = Int64(rv.rounded(.towardZero))
        let scale = Float(alpha / Double(r))
        var items: [(JSONString, JSONString)] = [] // (param, lora_A tensor name)
        for (name, ev) in entries.entries where name.hasSuffix(".lora_A") {
            guard let p = ev.objectValue?["param"]?.jsonString else { continue }
            items.append((p, name))
        }
        items.sort { CodePointOrder.less($0.0, $1.0) }
        for (param, name) in items {
            let module = BundleVerifier.moduleOf(param)
            guard let slot = slots[param], let te = vb.parsed.tensors[name],
                  let a = vb.parsed.container.tensorData(name),
                  let b = vb.parsed.container.tensorData(module.appending(".lora_B")),
                  case .array(let sshape)? = slot["shape"] else {
                throw BundleError(.build, "lora factors of \(param.string) are incomplete")
            }
            let shape = sshape.map { $0.intValue ?? -1 }
            guard let w = try base.get(param, slot) else {
                throw BundleError(.build, "base value missing for swap slot \(param.string)")
            }
            let merged = try LoraMerge.merge(param: param.string, dtype: te.dtype, wShape: shape, w: w, a: a, b: b, scale: scale)
            try body(SwapTensor(param: param, locator: Artifact.locator(slot), dtype: te.dtype, shape: shape, data: merged))
        }
    }
}

/// W' = W + scale * (B @ A) for one weight (W: out x in, A: r x in, B: out x r), all in the slot
/// dtype (F32, F16 or BF16), accumulated in fp32 and rounded once to the slot dtype.
///
/// The arithmetic is fixed, the same as the Kotlin core's `LoraMerge`, so every device gives the
/// same bits: for each element `acc = fma(B[i,k], A[k,j], acc)` for k = 0..r-1 from acc = 0, then
/// `fma(scale, acc, W[i,j])` in fp32 (`Float.addingProduct`, a correctly rounded fused
/// multiply-add), then one round-to-nearest-even to fp16/bf16. For fp16 slots this equals the
/// Python host merge bit for bit on the golden vectors; for fp32 slots it is within
/// `(r + 2) * 2^-24 * (|W| + |scale| * |B| @ |A|)` (docs/bundle-format.md).
///
/// Like Python, refuses NaN/Inf or values beyond the dtype's finite range (`merge`).
public enum LoraMerge {
    public static func merge(param: String, dtype: DType, wShape: [Int], w: Data, a: Data, b: Data, scale: Float) throws -> Data {
        guard wShape.count == 2, wShape[0] >= 0, wShape[1] > 0 else {
            throw BundleError(.build, "base value of \(param) has no usable 2-D shape \(wShape)")
        }
        let outF = wShape[0]
        let inF = wShape[1]
        let es = dtype.size
        if w.count != outF * inF * es {
            throw BundleError(.build, "base value of \(param) has \(w.count) bytes, expected \(outF * inF * es)")
        }
        let r = a.count / es / inF
        if a.count != r * inF * es || b.count != outF * r * es {
            throw BundleError(.build, "lora factors of \(param) do not fit \(wShape)")
        }
        let af = try toFloats(a, dtype)
        let bf = try toFloats(b, dtype)
        let wf = try toFloats(w, dtype)
        // every merged weight is finite with |w| <= maxAbsValue (65504, fp16's largest), whatever the slot dtype
        let limit: Float
        switch dtype {
        case .F32, .F16, .BF16: limit = Float(BundleFormat.maxAbsValue)
        default: throw BundleError(.build, "lora merge needs a floating-point slot; \(param) is \(dtype.rawValue)")
        }
        var out = Data(count: outF * inF * es)
        var acc = [Float](repeating: 0, count: inF)
        try out.withUnsafeMutableBytes { (dst: UnsafeMutableRawBufferPointer) in
            for i in 0..<outF {
                for j in 0..<inF { acc[j] = 0 }
                for k in 0..<r {
                    let bik = bf[i * r + k]
                    let row = k * inF
                    for j in 0..<inF { acc[j] = acc[j].addingProduct(bik, af[row + j]) }
                }
                for j in 0..<inF {
                    let idx = i * inF + j
                    let v = wf[idx].addingProduct(scale, acc[j])
                    if !(v >= -limit && v <= limit) {
                        throw BundleError(.merge, "merge of \(param) produced NaN or Inf values or a weight beyond +-65504; refusing to merge (nothing was written)")
                    }
                    switch dtype {
                    case .F32: dst.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: idx * 4, as: UInt32.self)
                    case .F16: dst.storeBytes(of: Fp16.fromFloat(v).littleEndian, toByteOffset: idx * 2, as: UInt16.self)
                    default: dst.storeBytes(of: Bf16.fromFloat(v).littleEndian, toByteOffset: idx * 2, as: UInt16.self)
                    }
                }
            }
        }
        return out
    }

    /// The elements of a little-endian F32/F16/BF16 buffer as Floats.
    public static func toFloats(_ d: Data, _ dtype: DType) throws -> [Float] {
        let n = d.count / dtype.size
        return try d.withUnsafeBytes { (p: UnsafeRawBufferPointer) -> [Float] in
            switch dtype {
            case .F32:
                return (0..<n).map { Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
            case .F16:
                return (0..<n).map { Fp16.toFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) }
            case .BF16:
                return (0..<n).map { Bf16.toFloat(UInt16(littleEndian: p.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) }
            default:
                throw BundleError(.build, "not a floating-point dtype: \(dtype.rawValue)")
            }
        }
    }
}
