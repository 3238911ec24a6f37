package dev.loragen.core

import org.junit.Assert.assertEquals
import org.junit.Test
import java.util.Random

class FmaTest {
    private fun same(a: Float, b: Float, c: Float) {
        val want = Math.fma(a, b, c) // the JDK's correctly rounded fma (not available on Android < 33)
        val got = Fma.fma(a, b, c)
        if (want.isNaN()) {
            assertEquals("fma($a, $b, $c)", true, got.isNaN())
        } else {
            assertEquals("fma($a, $b, $c)", java.lang.Float.floatToRawIntBits(want), java.lang.Float.floatToRawIntBits(got))
        }
    }

    @Test
    fun matchesJdkOnRandomOperands() {
        val rnd = Random(1234)
        for (i in 0 until 1_000_000) {
            val a = java.lang.Float.intBitsToFloat(rnd.nextInt())
            val b = java.lang.Float.intBitsToFloat(rnd.nextInt())
            val c = java.lang.Float.intBitsToFloat(rnd.nextInt())
            same(a, b, c)
        }
    }

    @Test
    fun matchesJdkWhereRoundingIsHard() {
        // operands of similar magnitude, near-cancellation and near-ties: where double rounding bites
        val rnd = Random(99)
        for (i in 0 until 1_000_000) {
            val a = (1 + rnd.nextInt(1 shl 12)) * Math.scalb(1f, -rnd.nextInt(12))
            val b = (1 + rnd.nextInt(1 shl 12)) * Math.scalb(1f, -rnd.nextInt(12))
            val p = a.toDouble() * b
            val c = when (i % 4) {
                0 -> (-p).toFloat() // near-exact cancellation
                1 -> Math.ulp(p.toFloat()) * (rnd.nextInt(5) - 2) / 2 // around a tie
                2 -> (rnd.nextFloat() - 0.5f) * Math.scalb(1f, rnd.nextInt(60) - 30)
                else -> java.lang.Float.intBitsToFloat(java.lang.Float.floatToRawIntBits(p.toFloat()) + rnd.nextInt(3) - 1) * -1
            }
            same(a, b, c)
            same(-a, b, c)
        }
        for (x in listOf(0f, -0f, Float.MIN_VALUE, Float.MAX_VALUE, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, Float.NaN, 1f, -1f)) {
            for (y in listOf(0f, -0f, Float.MIN_VALUE, Float.MAX_VALUE, Float.POSITIVE_INFINITY, 2f, -0.5f)) {
                for (z in listOf(0f, -0f, Float.MIN_VALUE, -Float.MAX_VALUE, Float.NEGATIVE_INFINITY, 1f)) same(x, y, z)
            }
        }
    }
}
