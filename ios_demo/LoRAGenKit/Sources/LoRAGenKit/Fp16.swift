import Foundation

/// IEEE 754 binary16 <-> binary32 by bit manipulation, the same algorithm as the Kotlin core's
/// Fp16.kt. (Swift's `Float16` is unavailable on Intel Macs, which still run `swift test`.)
///
/// `toFloat` is exact. `fromFloat` rounds to nearest, ties to even, overflows to infinity like
/// numpy/PyTorch `.to(float16)`, and keeps NaN payload bits (the 10 high mantissa bits; a NaN
/// whose payload would vanish becomes a quiet NaN).
public enum Fp16 {
    public static func toFloat(_ h: UInt16) -> Float {
        let hv = UInt32(h)
        let sign = (hv & 0x8000) << 16
        let exp = (hv >> 10) & 0x1F
        let mant = hv & 0x3FF
        let bits: UInt32
        if exp == 0x1F {
            bits = sign | 0x7F80_0000 | (mant << 13) // inf / NaN
        } else if exp != 0 {
            bits = sign | ((exp + 112) << 23) | (mant << 13) // normal: rebias 15 -> 127
        } else if mant == 0 {
            bits = sign // +-0
        } else {
            let f = Float(mant) * (1.0 / 16_777_216.0) // subnormal: mant * 2^-24, exact in float
            bits = sign | f.bitPattern
        }
        return Float(bitPattern: bits)
    }

    public static func fromFloat(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        let sign = (bits >> 16) & 0x8000
        let exp = Int((bits >> 23) & 0xFF)
        let mant = bits & 0x7F_FFFF
        if exp == 0xFF { // inf or NaN
            if mant == 0 { return UInt16(sign | 0x7C00) }
            let payload = mant >> 13
            return UInt16(sign | 0x7C00 | (payload == 0 ? 0x200 : payload))
        }
        let e = exp - 127 + 15 // half exponent field if normal
        if e >= 0x1F { return UInt16(sign | 0x7C00) } // overflow
        if e <= 0 {
            // subnormal half (or zero): m = round(full * 2^(e - 14)) with the 24-bit significand
            if e < -10 { return UInt16(sign) } // below half of the smallest subnormal
            let full = mant | 0x80_0000
            let shift = UInt32(14 - e) // 14...24
            var m = full >> shift
            let rem = full & ((UInt32(1) << shift) - 1)
            let halfway = UInt32(1) << (shift - 1)
            if rem > halfway || (rem == halfway && (m & 1) == 1) { m += 1 }
            return UInt16(sign | m) // may carry into the exponent field: the smallest normal, correct
        }
        var h = (UInt32(e) << 10) | (mant >> 13)
        let rem = mant & 0x1FFF
        if rem > 0x1000 || (rem == 0x1000 && (h & 1) == 1) { h += 1 } // may carry to inf: correct
        return UInt16(sign | h)
    }
}

/// bfloat16 <-> float32 (round to nearest even; NaN stays NaN).
public enum Bf16 {
    public static func toFloat(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    public static func fromFloat(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        if f.isNaN { return UInt16(truncatingIfNeeded: (bits >> 16) | 0x40) }
        let lsb = (bits >> 16) & 1
        return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ lsb) >> 16)
    }
}
