package dev.loragen.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.math.BigDecimal

class Fp16Test {
    private fun bits(f: Float) = java.lang.Float.floatToRawIntBits(f)

    @Test
    fun everyHalfRoundTripsExactly() {
        var nans = 0
        for (h in 0 until 65536) {
            val f = Fp16.toFloat(h)
            assertEquals("half 0x${Integer.toHexString(h)}", h, Fp16.fromFloat(f))
            if (f.isNaN()) nans++
        }
        assertEquals(2 * 1023, nans) // exponent 31 with a non-zero mantissa, both signs
    }

    @Test
    fun everyHalfDecodesToItsExactValue() {
        // value = (-1)^s * 2^(e-15) * (1 + m/1024), subnormal 2^-14 * m/1024, checked in exact decimal
        for (h in 0 until 65536) {
            val s = h ushr 15
            val e = (h ushr 10) and 31
            val m = h and 1023
            val f = Fp16.toFloat(h)
            if (e == 31) {
                assertTrue(if (m == 0) f.isInfinite() else f.isNaN())
                continue
            }
            val mag = if (e == 0) BigDecimal(m).multiply(BigDecimal(Math.scalb(1.0, -24)))
            else BigDecimal(1024 + m).multiply(BigDecimal(Math.scalb(1.0, e - 25)))
            val want = if (s == 1) mag.negate() else mag
            assertEquals("half 0x${Integer.toHexString(h)}", 0, BigDecimal(f.toDouble()).compareTo(want))
            if (h == 0x8000) assertEquals(bits(-0.0f), bits(f))
        }
    }

    @Test
    fun everyRoundingBoundaryRoundsToNearestEven() {
        // For each pair of adjacent finite halves (both signs), the float midpoint rounds to the one
        // with an even mantissa, and the floats just beside it round to the nearer half.
        var checked = 0
        for (sign in intArrayOf(0, 0x8000)) {
            for (h in 0 until 0x7bff) { // up to the pair (65280, 65504)
                val lo = Fp16.toFloat(sign or h)
                val hi = Fp16.toFloat(sign or (h + 1))
                val mid = ((lo.toDouble() + hi.toDouble()) / 2).toFloat()
                assertEquals(((lo.toDouble() + hi.toDouble()) / 2), mid.toDouble(), 0.0) // exact in float
                val even = if (h % 2 == 0) h else h + 1
                assertEquals(sign or even, Fp16.fromFloat(mid))
                val towardLo = if (sign == 0) Math.nextDown(mid) else Math.nextUp(mid)
                val towardHi = if (sign == 0) Math.nextUp(mid) else Math.nextDown(mid)
                assertEquals(sign or h, Fp16.fromFloat(towardLo))
                assertEquals(sign or (h + 1), Fp16.fromFloat(towardHi))
                checked++
            }
        }
        assertEquals(2 * 0x7bff, checked)
    }

    @Test
    fun overflowUnderflowAndSpecials() {
        assertEquals(0x7bff, Fp16.fromFloat(65504f))
        assertEquals(0x7bff, Fp16.fromFloat(Math.nextDown(65520f))) // below the overflow midpoint
        assertEquals(0x7c00, Fp16.fromFloat(65520f)) // midpoint to 2^16 rounds to even: infinity
        assertEquals(0xfc00, Fp16.fromFloat(-1e10f))
        assertEquals(0x7c00, Fp16.fromFloat(Float.POSITIVE_INFINITY))
        assertEquals(0x0000, Fp16.fromFloat(2.9802322e-8f)) // exactly 2^-25: tie to even (0)
        assertEquals(0x0001, Fp16.fromFloat(Math.nextUp(2.9802322e-8f)))
        assertEquals(0x8000, Fp16.fromFloat(-1e-30f))
        assertEquals(0x0000, Fp16.fromFloat(Float.MIN_VALUE))
        assertEquals(0x0400, Fp16.fromFloat(6.1035156e-5f)) // smallest normal
        assertEquals(0x03ff, Fp16.fromFloat(6.0975552e-5f)) // largest subnormal
        assertEquals(0x3c00, Fp16.fromFloat(1f))
        assertEquals(0x3c00, Fp16.fromFloat(1.00048828125f)) // 1 + 2^-11: tie, even stays 1
        assertEquals(0x3c01, Fp16.fromFloat(Math.nextUp(1.00048828125f)))
        assertEquals(0xc000, Fp16.fromFloat(-2f))
        assertEquals(0x3555, Fp16.fromFloat(1f / 3f))
        assertTrue(Fp16.toFloat(Fp16.fromFloat(Float.NaN)).isNaN())
        // a NaN whose payload lives only in the low 13 bits must stay NaN, not become infinity
        assertEquals(0x7e00, Fp16.fromFloat(java.lang.Float.intBitsToFloat(0x7f800001)))
        assertEquals(0x7c00, Fp16.fromFloat(java.lang.Float.intBitsToFloat(0x47800000))) // 2^16
    }

    @Test
    fun bfloat16RoundsToNearestEven() {
        assertEquals(0x3f80, Bf16.fromFloat(1f))
        assertEquals(0x3f80, Bf16.fromFloat(java.lang.Float.intBitsToFloat(0x3f808000))) // tie -> even
        assertEquals(0x3f82, Bf16.fromFloat(java.lang.Float.intBitsToFloat(0x3f818000))) // tie -> even (up)
        assertEquals(0x3f81, Bf16.fromFloat(java.lang.Float.intBitsToFloat(0x3f808001)))
        for (h in 0 until 65536) {
            val f = Bf16.toFloat(h)
            if (!f.isNaN()) assertEquals(h, Bf16.fromFloat(f))
        }
    }
}
