package dev.loragen.core

/**
 * Correctly rounded single-precision fused multiply-add without `Math.fma(float, float, float)`,
 * which Android only has from API 33 (minSdk here is 28).
 *
 * a * b is exact in double (24 + 24 significant bits <= 53). The sum with c is rounded to double
 * with *round to odd* (TwoSum gives the exact error; an inexact even result is nudged one ulp
 * toward the error), and rounding a round-to-odd value with >= 2 extra bits to float gives the
 * correctly rounded result (Boldo & Melquiond). The tests compare it with the JDK's Math.fma.
 */
object Fma {
    fun fma(a: Float, b: Float, c: Float): Float {
        val p = a.toDouble() * b.toDouble() // exact
        val cd = c.toDouble()
        val s = p + cd
        if (s.isNaN() || s.isInfinite() || p.isInfinite() || cd.isInfinite()) return (p + cd).toFloat()
        // TwoSum: s + err == p + cd exactly
        val bb = s - p
        val err = (p - (s - bb)) + (cd - bb)
        if (err == 0.0) return s.toFloat()
        val bits = java.lang.Double.doubleToRawLongBits(s)
        if ((bits and 1L) != 0L) return s.toFloat() // already odd
        // nudge one ulp toward the exact value: the result is odd and keeps the sticky information
        val odd = if ((err > 0) == (s > 0)) java.lang.Double.longBitsToDouble(bits + 1) else java.lang.Double.longBitsToDouble(bits - 1)
        return odd.toFloat()
    }
}
