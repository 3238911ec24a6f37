package dev.loragen.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.nio.ByteBuffer
import java.nio.ByteOrder

class MergeTest {
    companion object {
        private const val U32 = 1.0 / (1 shl 24) // unit roundoff of fp32 (2^-24)

        fun f32(vararg v: Float): ByteBuffer {
            val b = ByteBuffer.allocate(v.size * 4).order(ByteOrder.LITTLE_ENDIAN)
            v.forEachIndexed { i, x -> b.putFloat(i * 4, x) }
            return b
        }

        fun f16(vararg v: Float): ByteBuffer {
            val b = ByteBuffer.allocate(v.size * 2).order(ByteOrder.LITTLE_ENDIAN)
            v.forEachIndexed { i, x -> b.putShort(i * 2, Fp16.fromFloat(x).toShort()) }
            return b
        }

        fun floats(b: ByteBuffer, d: DType) = LoraMerge.toFloats(b, d)

        /**
         * For an fp32 lora bundle: every merged element is within
         * (r + 2) * 2^-24 * (|W| + |scale| * sum_k |B[i,k]| |A[k,j]|) of Python's host merge (both are
         * fp32 evaluations of the same exact value with r + 1 roundings each, in different orders),
         * and within (r + 1) * 2^-24 * (...) of the exact value computed in fp64. Returns the
         * largest error / bound seen against Python.
         */
        fun assertWithinBound(n: String, vb: VerifiedBundle, plan: List<SwapTensor>, base: BaseValues, expected: SafetensorsFile): Double {
            val lora = vb.manifest.obj("lora")!!
            val r = JsonValues.num(lora["r"])!!.toInt()
            val scale = (JsonValues.num(lora["alpha"])!! / r).toFloat()
            var worst = 0.0
            var exactCount = 0
            var total = 0
            for (t in plan) {
                val slot = vb.artifact.slotsByParam.getValue(t.param)
                val module = BundleVerifier.moduleOf(t.param)
                val w = floats(base.get(t.param, slot)!!, DType.F32)
                val a = floats(vb.parsed.container.tensorBuffer("$module.lora_A"), DType.F32)
                val b = floats(vb.parsed.container.tensorBuffer("$module.lora_B"), DType.F32)
                val mine = floats(t.data, DType.F32)
                val py = floats(expected.tensorBuffer(t.param), DType.F32)
                val outF = t.shape[0].toInt()
                val inF = t.shape[1].toInt()
                for (i in 0 until outF) for (j in 0 until inF) {
                    var mag = 0.0
                    var exact = 0.0
                    for (k in 0 until r) {
                        mag += Math.abs(b[i * r + k].toDouble() * a[k * inF + j])
                        exact += b[i * r + k].toDouble() * a[k * inF + j]
                    }
                    val idx = i * inF + j
                    mag = Math.abs(w[idx].toDouble()) + Math.abs(scale.toDouble()) * mag
                    exact = w[idx] + scale.toDouble() * exact
                    val bound = (r + 2) * U32 * mag
                    val err = Math.abs(mine[idx].toDouble() - py[idx])
                    assertTrue("$n ${t.param}[$i,$j]: kotlin ${mine[idx]} python ${py[idx]} bound $bound", err <= bound)
                    assertTrue("$n ${t.param}[$i,$j] vs fp64", Math.abs(mine[idx] - exact) <= (r + 1) * U32 * mag)
                    worst = maxOf(worst, err / bound)
                    if (mine[idx] == py[idx]) exactCount++
                    total++
                }
            }
            println("  $n: $exactCount/$total elements bit-identical to Python's fp64 merge; worst |diff| = ${"%.3f".format(worst)} of the bound")
            return worst
        }
    }

    @Test
    fun smallExactMergeFp32() {
        // W 2x2, r = 1: W + 2 * B @ A with A = [0.5, 0.25], B = [2, 4]^T
        val out = LoraMerge.merge("w", DType.F32, listOf(2, 2), f32(1f, 2f, 3f, 4f), f32(0.5f, 0.25f), f32(2f, 4f), 2f)
        assertArrayEquals(floatArrayOf(3f, 3f, 7f, 6f), floats(out, DType.F32), 0f)
    }

    @Test
    fun smallExactMergeFp16() {
        val out = LoraMerge.merge("w", DType.F16, listOf(2, 2), f16(1f, 2f, 3f, 4f), f16(0.5f, 0.25f), f16(2f, 4f), 2f)
        assertEquals(8, out.remaining())
        assertArrayEquals(floatArrayOf(3f, 3f, 7f, 6f), floats(out, DType.F16), 0f)
    }

    @Test
    fun fp16RoundsOnceToNearestEven() {
        // 2048 + 2 * 0.5 = 2049: halfway between fp16 2048 and 2050 -> even (2048); 2048 + 3 -> 2052
        val a = LoraMerge.merge("w", DType.F16, listOf(1, 1), f16(2048f), f16(0.5f), f16(1f), 2f)
        assertEquals(2048f, floats(a, DType.F16)[0])
        val b = LoraMerge.merge("w", DType.F16, listOf(1, 1), f16(2048f), f16(1.5f), f16(1f), 2f)
        assertEquals(2052f, floats(b, DType.F16)[0])
    }

    @Test
    fun definedAccumulationOrder() {
        // acc = fma(B[k], A[k], acc) for k = 0, 1, 2 from 0: 1e8, then 1e8 + 1 rounds to 1e8, then 0
        val out = LoraMerge.merge("w", DType.F32, listOf(1, 1), f32(5f), f32(1e8f, 1f, -1e8f), f32(1f, 1f, 1f), 2f)
        assertEquals(5f, floats(out, DType.F32)[0])
        // the final step is one fma: 1 + 3 * (1/3 as float) rounds once
        val one = LoraMerge.merge("w", DType.F32, listOf(1, 1), f32(1f), f32(1f / 3f), f32(1f), 3f)
        assertEquals(Math.fma(3f, 1f / 3f, 1f), floats(one, DType.F32)[0])
    }

    @Test
    fun refusesOverflowAndNaN() {
        // fp16: 65504 + 16 = 65520 is beyond the finite range (Python refuses it before rounding)
        expectCode("merge") { LoraMerge.merge("w", DType.F16, listOf(1, 1), f16(65504f), f16(8f), f16(1f), 2f) }
        LoraMerge.merge("w", DType.F16, listOf(1, 1), f16(65504f), f16(0f), f16(1f), 2f)
        expectCode("merge") { LoraMerge.merge("w", DType.F32, listOf(1, 1), f32(3e38f), f32(3e38f), f32(1f), 2f) }
        expectCode("merge") { LoraMerge.merge("w", DType.F32, listOf(1, 1), f32(Float.NaN), f32(0f), f32(0f), 2f) }
        expectCode("build") { LoraMerge.merge("w", DType.F32, listOf(2, 2), f32(1f, 2f, 3f), f32(0f, 0f), f32(0f, 0f), 2f) }
        expectCode("build") { LoraMerge.merge("w", DType.I8, listOf(1, 1), ByteBuffer.allocate(1), ByteBuffer.allocate(1), ByteBuffer.allocate(1), 2f) }
    }

    @Test
    fun fp16LoraOnDeviceWithinDocumentedBoundOfMergedBundle() {
        // coreml (fp16): the lora bundle's factors are rounded to fp16, the merged bundle was merged
        // from fp32 factors; docs/bundle-format.md bounds the difference per element by
        // 2 eps16 * scale * (|B| @ |A|) + eps16 * |W'| with eps16 = 2^-10
        val art = Golden.artifact("coreml")
        val base = BaseValues.fromSafetensors(Golden.safetensors("base/coreml.safetensors"))
        val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle("coreml-lora")), art, Golden.publicKey)
        val lora = SwapPlan.build(vb, base)
        val merged = SwapPlan.build(BundleVerifier.verify(ByteSource.of(Golden.bundle("coreml-merged")), art, Golden.publicKey))
        assertEquals(merged.map { it.param }, lora.map { it.param })
        val eps16 = Math.scalb(1.0, -10)
        var differing = 0
        for ((x, y) in lora.zip(merged)) {
            val module = BundleVerifier.moduleOf(x.param)
            val a = floats(vb.parsed.container.tensorBuffer("$module.lora_A"), DType.F16)
            val b = floats(vb.parsed.container.tensorBuffer("$module.lora_B"), DType.F16)
            val mine = floats(x.data, DType.F16)
            val server = floats(y.data, DType.F16)
            val outF = x.shape[0].toInt(); val inF = x.shape[1].toInt(); val r = a.size / inF
            for (i in 0 until outF) for (j in 0 until inF) {
                var ab = 0.0
                for (k in 0 until r) ab += Math.abs(b[i * r + k].toDouble() * a[k * inF + j])
                val idx = i * inF + j
                val bound = 2 * eps16 * 2.0 * ab + eps16 * Math.abs(server[idx].toDouble())
                assertTrue("${x.param}[$i,$j] ${mine[idx]} vs ${server[idx]}", Math.abs(mine[idx].toDouble() - server[idx]) <= bound)
                if (mine[idx] != server[idx]) differing++
            }
        }
        assertTrue(differing > 0) // the factor rounding is visible: the two kinds are not bit-identical
    }

    @Test
    fun fp32LoraWithinBoundOfPython() {
        for ((n, backend) in listOf("executorch-lora" to "executorch", "onnx-lora" to "onnx")) {
            val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle(n)), Golden.artifact(backend), Golden.publicKey)
            val base = BaseValues.fromSafetensors(Golden.safetensors("base/$backend.safetensors"))
            val plan = SwapPlan.build(vb, base)
            assertEquals(6, plan.size)
            val worst = assertWithinBound(n, vb, plan, base, Golden.safetensors("expected/merged-$n.safetensors"))
            assertTrue(worst <= 1.0)
        }
    }
}
