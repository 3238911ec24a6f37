import Foundation

/// Quantized weight encodings and the on-device requantization of a `lora` bundle for a quantized
/// artifact: `quantize(deviceMerge(dequantize(q, scale), A, B, scale))`, bit-exact with the Python
/// reference (loragen_mobile/quant.py, tests/golden/quant/, docs/quantization.md). Kotlin twin:
/// android_demo/core/.../Quant.kt.
///
/// A weight `[out, in]` is stored as two parts: `q` (integer codes, row-major; 4-bit codes two per
/// byte, element 2i in the low nibble) and `scale` (one per group of `group` input features, or one
/// per row when `group` is nil; little-endian fp32, bf16 or fp16). Every step is one IEEE operation
/// in the precision named, in the order written (Swift does not contract `a * b + c` into an FMA).
public struct QuantEncoding: Sendable, CustomStringConvertible {
    public let id: String
    public let family: String // xnnpack | ort | coreml
    public let bits: Int
    public let group: Int?

    private var isOrt: Bool { family == "ort" }
    private var isCoreml: Bool { family == "coreml" }
    private var qmin: Int { -(1 << (bits - 1)) }
    private var qmax: Int { (1 << (bits - 1)) - 1 }

    public var description: String { id }

    /// The dtype of the q part: int8 for 8-bit xnnpack/coreml, uint8 otherwise.
    public var qDType: DType { bits == 8 && family != "ort" ? .I8 : .U8 }

    /// The dtype of the scale part: bf16 (xnnpack int4), fp32 (xnnpack int8, ort), fp16 (coreml).
    public var scaleDType: DType {
        switch family {
        case "xnnpack": return bits == 4 ? .BF16 : .F32
        case "ort": return .F32
        default: return .F16
        }
    }

    public func groupSize(_ inF: Int) -> Int { group ?? inF }

    public func checkShape(_ outF: Int, _ inF: Int) throws {
        if outF <= 0 || inF <= 0 { throw BundleError(.encoding, "\(id) quantizes non-empty 2-D weights, not [\(outF), \(inF)]") }
        if let g = group, inF % g != 0 {
            throw BundleError(.encoding, "\(id): \(inF) input features are not a multiple of the group size \(g)")
        }
        if bits == 4 && inF % 2 != 0 { throw BundleError(.encoding, "\(id): \(inF) input features do not pack into nibbles") }
    }

    /// The stored shape of each part (`q`, `scale`), as Python's `Encoding.part_shapes`.
    public func partShapes(_ outF: Int, _ inF: Int) throws -> [String: [Int]] {
        try checkShape(outF, inF)
        let groups = group.map { inF / $0 } ?? 1
        if isOrt { return ["q": [outF, groups, group! * bits / 8], "scale": [outF, groups]] }
        return ["q": [outF, inF * bits / 8], "scale": [outF, groups]]
    }

    public func qBytes(_ outF: Int, _ inF: Int) -> Int { outF * inF * bits / 8 }
    public func scaleBytes(_ outF: Int, _ inF: Int) -> Int { outF * (inF / groupSize(inF)) * scaleDType.size }

    // ------------------------------------------------------------------ dequantize

    /// fp32 weights `[out, in]` (row-major) from the stored parts, as the backend's runtime computes them.
    public func dequantize(q qData: Data, scale scaleData: Data, outF: Int, inF: Int) throws -> [Float] {
        try checkShape(outF, inF)
        try checkParts(qData, scaleData, outF, inF)
        let q = [UInt8](qData)
        let g = groupSize(inF)
        let groups = inF / g
        let s = readScales([UInt8](scaleData), outF * groups)
        var out = [Float](repeating: 0, count: outF * inF)
        for i in 0..<outF {
            for j in 0..<inF {
                let idx = i * inF + j
                let v = Float(code(q, idx)) * s[i * groups + j / g] // fp32 product
                out[idx] = isCoreml ? Fp16.toFloat(Fp16.fromFloat(v)) : v
            }
        }
        return out
    }

    private func code(_ q: [UInt8], _ idx: Int) -> Int {
        if bits == 8 { return isOrt ? Int(q[idx]) - 128 : Int(Int8(bitPattern: q[idx])) }
        let b = Int(q[idx >> 1])
        let u = idx & 1 == 0 ? b & 0xF : b >> 4
        return isCoreml ? (u > 7 ? u - 16 : u) : u - 8
    }

    // ------------------------------------------------------------------ quantize

    /// The stored parts (q bytes, scale bytes) of fp32 weights `[out, in]`: the backend quantizer's bytes.
    public func quantize(_ w: [Float], outF: Int, inF: Int) throws -> (q: Data, scale: Data) {
        try checkShape(outF, inF)
        if w.count != outF * inF { throw BundleError(.encoding, "\(id): \(w.count) weights do not fill [\(outF), \(inF)]") }
        let g = groupSize(inF)
        let groups = inF / g
        var codes = [Int](repeating: 0, count: outF * inF)
        var scales = [Float](repeating: 0, count: outF * groups)
        for i in 0..<outF {
            for k in 0..<groups {
                let at = i * inF + k * g
                switch family {
                case "xnnpack": scales[i * groups + k] = xnnpack(w, at, g, &codes)
                case "ort": scales[i * groups + k] = ort(w, at, g, &codes)
                default: scales[i * groups + k] = coreml(w, at, g, &codes)
                }
            }
        }
        return (pack(codes), writeScales(scales))
    }

    /// `x` clamped to [lo, hi] (NaN passes through, as Kotlin's coerceIn and torch.clamp).
    private static func clamp(_ x: Float, _ lo: Float, _ hi: Float) -> Float { x < lo ? lo : (x > hi ? hi : x) }

    /// A clamped code as an integer; NaN (only from NaN weights, which requantize refuses) gives 0
    /// as on the JVM, where Swift's `Int(_:)` would trap.
    private static func toInt(_ x: Float) -> Int { x.isNaN ? 0 : Int(x) }

    /// torchao symmetric: scale = max|w| / ((qmax - qmin) / 2) in fp32, at least the smallest normal
    /// fp32; q = clamp(round half even(w * (1 / scale))); the int4 scale is stored as its bf16 rounding.
    private func xnnpack(_ w: [Float], _ at: Int, _ g: Int, _ codes: inout [Int]) -> Float {
        var amax: Float = 0
        for j in at..<(at + g) {
            let a = abs(w[j])
            if a > amax { amax = a }
        }
        var scale = amax / (Float(qmax - qmin) / 2) // 7.5 or 127.5, exact
        if scale < Float.leastNormalMagnitude { scale = Float.leastNormalMagnitude }
        let recip = 1 / scale
        for j in at..<(at + g) {
            let r = (w[j] * recip).rounded(.toNearestOrEven)
            codes[j] = Self.toInt(Self.clamp(r, Float(qmin), Float(qmax)))
        }
        return bits == 4 ? Bf16.toFloat(Bf16.fromFloat(scale)) : scale
    }

    /// onnxruntime MatMulNBits symmetric: the block's value of largest magnitude, signed (the minimum
    /// on a tie), over -2^(bits-1) is the scale; t = w * (1 / scale) + 2^(bits-1) in separate fp32
    /// steps (1 / scale taken as 0 for a zero scale), roundf (halves away from zero), clamped to
    /// [0, 2^bits - 1].
    private func ort(_ w: [Float], _ at: Int, _ g: Int, _ codes: inout [Int]) -> Float {
        let mid = 1 << (bits - 1)
        var vmax = w[at]
        var vmin = w[at]
        for j in (at + 1)..<(at + g) {
            let v = w[j]
            if v > vmax { vmax = v }
            if v < vmin { vmin = v }
        }
        let signed = abs(vmax) > abs(vmin) ? vmax : vmin
        let scale = signed / -Float(mid)
        let recip: Float = scale != 0 ? 1 / scale : 0
        let midF = Float(mid)
        let top = Float(2 * mid - 1)
        for j in at..<(at + g) {
            let p = w[j] * recip
            let t = p + midF
            var r = t.rounded(.towardZero)
            if abs(t - r) >= 0.5 { r += t > 0 ? 1 : (t < 0 ? -1 : 0) }
            codes[j] = Self.toInt(Self.clamp(r, 0, top)) - mid
        }
        return scale
    }

    /// coremltools linear_symmetric in numpy fp16 arithmetic: w16 = fp16(w); scale = fp16(max|w16| /
    /// qmax) (the division in fp32); q = round half even(fp16(w16 / scale)) clipped to [-qmax, qmax];
    /// a zero scale gives codes 0.
    private func coreml(_ w: [Float], _ at: Int, _ g: Int, _ codes: inout [Int]) -> Float {
        var ma: Float = 0
        for j in at..<(at + g) {
            let a = abs(Fp16.toFloat(Fp16.fromFloat(w[j])))
            if a > ma { ma = a }
        }
        let scale = Fp16.toFloat(Fp16.fromFloat(ma / Float(qmax)))
        for j in at..<(at + g) {
            if scale == 0 {
                codes[j] = 0
                continue
            }
            let w16 = Fp16.toFloat(Fp16.fromFloat(w[j]))
            let quot = Fp16.toFloat(Fp16.fromFloat(w16 / scale))
            codes[j] = Self.toInt(Self.clamp(quot.rounded(.toNearestOrEven), -Float(qmax), Float(qmax)))
        }
        return scale
    }

    private func pack(_ codes: [Int]) -> Data {
        if bits == 8 {
            return Data(codes.map { UInt8(truncatingIfNeeded: isOrt ? $0 + 128 : $0) })
        }
        // two's complement nibbles on Core ML, offset by 8 on xnnpack/ort; element 2i in the low nibble
        func nib(_ c: Int) -> Int { isCoreml ? c & 0xF : c + 8 }
        var out = [UInt8](repeating: 0, count: codes.count / 2)
        for i in 0..<out.count { out[i] = UInt8(truncatingIfNeeded: nib(codes[2 * i]) | (nib(codes[2 * i + 1]) << 4)) }
        return Data(out)
    }

    private func readScales(_ b: [UInt8], _ n: Int) -> [Float] {
        (0..<n).map { i -> Float in
            switch scaleDType {
            case .F32:
                let lo = UInt32(b[4 * i]) | (UInt32(b[4 * i + 1]) << 8)
                let hi = (UInt32(b[4 * i + 2]) << 16) | (UInt32(b[4 * i + 3]) << 24)
                return Float(bitPattern: lo | hi)
            case .BF16: return Bf16.toFloat(UInt16(b[2 * i]) | (UInt16(b[2 * i + 1]) << 8))
            default: return Fp16.toFloat(UInt16(b[2 * i]) | (UInt16(b[2 * i + 1]) << 8))
            }
        }
    }

    private func writeScales(_ s: [Float]) -> Data {
        var d = Data(capacity: s.count * scaleDType.size)
        for v in s {
            switch scaleDType {
            case .F32: withUnsafeBytes(of: v.bitPattern.littleEndian) { d.append(contentsOf: $0) }
            case .BF16: withUnsafeBytes(of: Bf16.fromFloat(v).littleEndian) { d.append(contentsOf: $0) }
            default: withUnsafeBytes(of: Fp16.fromFloat(v).littleEndian) { d.append(contentsOf: $0) }
            }
        }
        return d
    }

    private func checkParts(_ q: Data, _ scale: Data, _ outF: Int, _ inF: Int) throws {
        if q.count != qBytes(outF, inF) || scale.count != scaleBytes(outF, inF) {
            throw BundleError(.encoding, "\(id) parts of [\(outF), \(inF)] are \(qBytes(outF, inF)) + \(scaleBytes(outF, inF)) bytes, "
                + "not \(q.count) + \(scale.count)")
        }
    }
}

public enum Quant {
    /// The encodings this reader knows (everything else is refused, code `encoding`).
    public static let known = [
        "xnnpack-int4-g32", "xnnpack-int4-g128", "xnnpack-int8-pc",
        "ort-int4-b32", "ort-int4-b128", "ort-int8-b32", "ort-int8-b128",
        "coreml-int4-b32", "coreml-int8-pc",
    ]

    /// The encoding named `id`; an unknown one is refused (`encoding`).
    public static func get(_ id: String) throws -> QuantEncoding {
        guard known.contains(id) else {
            throw BundleError(.encoding, "unknown weight encoding '\(id)'; this reader knows \(known.joined(separator: ", "))")
        }
        let f = id.split(separator: "-").map(String.init) // family, intN, gN | bN | pc (the known ids only)
        let bits = Int(f[1].dropFirst(3))!
        let group: Int? = f[2] == "pc" ? nil : Int(f[2].dropFirst())!
        return QuantEncoding(id: id, family: f[0], bits: bits, group: group)
    }

    /// `W + scale * B @ A` as Python's `quant.device_merge`: per element, acc = 0.0; for k = 0..r-1,
    /// acc += B[i,k] * A[k,j] (Double, each product exact); acc * scale (Double); W + that (Double);
    /// one rounding to Float. W `[out, in]`, A `[r, in]`, B `[out, r]`, row-major.
    public static func deviceMerge(w: [Float], a: [Float], b: [Float], r: Int, scale: Double) throws -> [Float] {
        let outF = r > 0 ? b.count / r : 0
        let inF = r > 0 ? a.count / r : 0
        if r <= 0 || a.count != r * inF || b.count != outF * r || w.count != outF * inF {
            throw BundleError(.build, "lora factors A \(a.count), B \(b.count) (r = \(r)) do not fit a weight of \(w.count) values")
        }
        var out = [Float](repeating: 0, count: w.count)
        for i in 0..<outF {
            for j in 0..<inF {
                var acc = 0.0
                for k in 0..<r {
                    let p = Double(b[i * r + k]) * Double(a[k * inF + j])
                    acc += p
                }
                let idx = i * inF + j
                let d = acc * scale
                out[idx] = Float(Double(w[idx]) + d)
            }
        }
        return out
    }

    /// What a phone does with a `lora` bundle for a quantized slot: dequantize the stored parts,
    /// `deviceMerge`, quantize again with the backend's rule. Refuses (`merge`) a merge that gives
    /// NaN/Inf or a weight beyond +-`BundleFormat.maxAbsValue`, as the fp merge does.
    public static func requantize(_ enc: QuantEncoding, q: Data, scale: Data, outF: Int, inF: Int,
                                  a: [Float], b: [Float], r: Int, loraScale: Double,
                                  param: String = "weight") throws -> (q: Data, scale: Data) {
        let merged = try deviceMerge(w: try enc.dequantize(q: q, scale: scale, outF: outF, inF: inF), a: a, b: b, r: r, scale: loraScale)
        let limit = Float(BundleFormat.maxAbsValue)
        for v in merged where !(v >= -limit && v <= limit) {
            throw BundleError(.merge, "merge of \(param) produced NaN or Inf values or a weight beyond +-65504; refusing to merge (nothing was written)")
        }
        return try enc.quantize(merged, outF: outF, inF: inF)
    }
}
