package dev.loragen.core

/**
 * IEEE 754 binary16 <-> binary32 conversion (JDK 17 has no `Float.float16ToFloat`).
 *
 * [toFloat] is exact. [fromFloat] rounds to nearest, ties to even, overflows to infinity like
 * numpy/PyTorch `.to(float16)` and `Float.floatToFloat16` (JDK 20+), and keeps NaN payload bits
 * (the 10 high mantissa bits; a NaN whose payload would vanish becomes a quiet NaN).
 */
object Fp16 {
    fun toFloat(h: Int): Float {
        val sign = (h and 0x8000) shl 16
        val exp = (h ushr 10) and 0x1f
        val mant = h and 0x3ff
        val bits = when {
            exp == 0x1f -> sign or 0x7f800000 or (mant shl 13) // inf / NaN
            exp != 0 -> sign or ((exp + 112) shl 23) or (mant shl 13) // normal: rebias 15 -> 127
            mant == 0 -> sign // +-0
            else -> { // subnormal: mant * 2^-24, exact in float
                val f = mant.toFloat() * (1.0f / 16777216.0f)
                sign or java.lang.Float.floatToRawIntBits(f)
            }
        }
        return java.lang.Float.intBitsToFloat(bits)
    }

    fun fromFloat(f: Float): Int {
        val bits = java.lang.Float.floatToRawIntBits(f)
        val sign = (bits ushr 16) and 0x8000
        val exp = (bits ushr 23) and 0xff
        val mant = bits and 0x7fffff
        if (exp == 0xff) { // inf or NaN
            if (mant == 0) return sign or 0x7c00
            val payload = mant ushr 13
            return sign or 0x7c00 or (if (payload == 0) 0x200 else payload)
        }
        val e = exp - 127 + 15 // half exponent field if normal
        if (e >= 0x1f) return sign or 0x7c00 // overflow (already beyond max exponent)
        if (e <= 0) {
            // subnormal half (or zero): value = m * 2^-24 with m = round(full * 2^(e - 1 - 13))
            if (e < -10) return sign // below half of the smallest subnormal: rounds to zero
            val full = mant or 0x800000 // 24-bit significand
            val shift = 14 - e // 14..24
            var m = full ushr shift
            val rem = full and ((1 shl shift) - 1)
            val halfway = 1 shl (shift - 1)
            if (rem > halfway || (rem == halfway && (m and 1) == 1)) m++
            return sign or m // m may carry into the exponent field (0x400): correct smallest normal
        }
        var h = (e shl 10) or (mant ushr 13)
        val rem = mant and 0x1fff
        if (rem > 0x1000 || (rem == 0x1000 && (h and 1) == 1)) h++ // may carry to inf: correct
        return sign or h
    }
}
