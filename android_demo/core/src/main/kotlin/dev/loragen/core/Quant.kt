package dev.loragen.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs
import kotlin.math.sign
import kotlin.math.truncate

/**
 * Quantized weight encodings and the on-device requantization of a `lora` bundle for a quantized
 * artifact: `quantize(deviceMerge(dequantize(q, scale), A, B, scale))`, bit-exact with the Python
 * reference (loragen_mobile/quant.py, tests/golden/quant/, docs/quantization.md).
 *
 * A weight `[out, in]` is stored as two parts: `q` (integer codes, row-major; 4-bit codes two per
 * byte, element 2i in the low nibble) and `scale` (one per group of [group] input features, or one
 * per row when [group] is null; little-endian fp32, bf16 or fp16). Every step below is one IEEE
 * operation in the precision named, in the order written, so the JVM (strict IEEE since Java 17,
 * no FMA contraction) gives the same bits as PyTorch/numpy on the host.
 */
class QuantEncoding internal constructor(val id: String, val family: String, val bits: Int, val group: Int?) {
    /** The dtype of the q part: int8 for 8-bit xnnpack/coreml, uint8 otherwise. */
    val qDtype: DType get() = if (bits == 8 && family != "ort") DType.I8 else DType.U8

    /** The dtype of the scale part: bf16 (xnnpack int4), fp32 (xnnpack int8, ort), fp16 (coreml). */
    val scaleDtype: DType
        get() = when (family) {
            "xnnpack" -> if (bits == 4) DType.BF16 else DType.F32
            "ort" -> DType.F32
            else -> DType.F16
        }

    private val isOrt = family == "ort"
    private val isCoreml = family == "coreml"
    private val qmin = -(1 shl (bits - 1))
    private val qmax = (1 shl (bits - 1)) - 1

    /** Input features per scale for a weight with [inF] columns. */
    fun groupSize(inF: Int): Int = group ?: inF

    fun checkShape(outF: Int, inF: Int) {
        if (outF <= 0 || inF <= 0) fail(ErrorCode.ENCODING, "$id quantizes non-empty 2-D weights, not [$outF, $inF]")
        if (group != null && inF % group != 0) {
            fail(ErrorCode.ENCODING, "$id: $inF input features are not a multiple of the group size $group")
        }
        if (bits == 4 && inF % 2 != 0) fail(ErrorCode.ENCODING, "$id: $inF input features do not pack into nibbles")
    }

    /** The stored shape of each part (`q`, `scale`), as Python's `Encoding.part_shapes`. */
    fun partShapes(outF: Int, inF: Int): Map<String, List<Long>> {
        checkShape(outF, inF)
        val groups = if (group != null) inF / group else 1
        val o = outF.toLong()
        if (family == "ort") {
            return linkedMapOf("q" to listOf(o, groups.toLong(), (group!! * bits / 8).toLong()), "scale" to listOf(o, groups.toLong()))
        }
        return linkedMapOf("q" to listOf(o, (inF * bits / 8).toLong()), "scale" to listOf(o, groups.toLong()))
    }

    fun qBytes(outF: Int, inF: Int): Int = outF * inF * bits / 8
    fun scaleBytes(outF: Int, inF: Int): Int = outF * (inF / groupSize(inF)) * scaleDtype.size

    // ------------------------------------------------------------------ dequantize

    /** fp32 weights `[out, in]` (row-major) from the stored parts, as the backend's runtime computes them. */
    fun dequantize(q: ByteArray, scale: ByteArray, outF: Int, inF: Int): FloatArray {
        checkShape(outF, inF)
        checkParts(q, scale, outF, inF)
        val g = groupSize(inF)
        val groups = inF / g
        val s = readScales(scale, outF * groups)
        val out = FloatArray(outF * inF)
        for (i in 0 until outF) {
            for (j in 0 until inF) {
                val idx = i * inF + j
                val sv = s[i * groups + j / g]
                val v = code(q, idx).toFloat() * sv // fp32 product (exact for 4-bit codes times bf16/fp16)
                out[idx] = if (isCoreml) Fp16.toFloat(Fp16.fromFloat(v)) else v
            }
        }
        return out
    }

    /** The signed integer code of element [idx] (row-major `[out, in]`) of a q part. */
    private fun code(q: ByteArray, idx: Int): Int {
        if (bits == 8) {
            return if (isOrt) (q[idx].toInt() and 0xff) - 128 else q[idx].toInt()
        }
        val b = q[idx ushr 1].toInt() and 0xff
        val u = if (idx and 1 == 0) b and 0xf else b ushr 4
        return if (isCoreml) (if (u > 7) u - 16 else u) else u - 8
    }

    // ------------------------------------------------------------------ quantize

    /** The stored parts (q bytes, scale bytes) of fp32 weights `[out, in]`: the backend quantizer's bytes. */
    fun quantize(w: FloatArray, outF: Int, inF: Int): Pair<ByteArray, ByteArray> {
        checkShape(outF, inF)
        if (w.size != outF * inF) fail(ErrorCode.ENCODING, "$id: ${w.size} weights do not fill [$outF, $inF]")
        val g = groupSize(inF)
        val groups = inF / g
        val codes = IntArray(outF * inF)
        val scales = FloatArray(outF * groups)
        for (i in 0 until outF) {
            for (k in 0 until groups) {
                val at = i * inF + k * g
                scales[i * groups + k] = when (family) {
                    "xnnpack" -> xnnpack(w, at, g, codes)
                    "ort" -> ort(w, at, g, codes)
                    else -> coreml(w, at, g, codes)
                }
            }
        }
        return Pair(pack(codes), writeScales(scales))
    }

    /** torchao symmetric: scale = max|w| / ((qmax - qmin) / 2) in fp32, at least the smallest normal
     *  fp32; q = clamp(rint(w * (1 / scale))); the codes use the fp32 scale, the stored int4 scale is
     *  its bf16 rounding (nearest even). */
    private fun xnnpack(w: FloatArray, at: Int, g: Int, codes: IntArray): Float {
        var amax = 0f
        for (j in at until at + g) {
            val a = abs(w[j])
            if (a > amax) amax = a
        }
        var scale = amax / ((qmax - qmin).toFloat() / 2f) // 7.5f or 127.5f, exact
        if (scale < java.lang.Float.MIN_NORMAL) scale = java.lang.Float.MIN_NORMAL
        val recip = 1f / scale
        for (j in at until at + g) {
            val r = Math.rint((w[j] * recip).toDouble()) // round half even of the fp32 product
            codes[j] = r.coerceIn(qmin.toDouble(), qmax.toDouble()).toInt()
        }
        return if (bits == 4) Bf16.toFloat(Bf16.fromFloat(scale)) else scale
    }

    /** onnxruntime MatMulNBits symmetric: the block's value of largest magnitude, signed (the minimum
     *  on a tie), over -2^(bits-1) is the scale; t = w * (1 / scale) + 2^(bits-1) in separate fp32
     *  steps (1 / scale taken as 0 for a zero scale), roundf (halves away from zero: trunc, then
     *  +-1 where |t - trunc(t)| >= 0.5), clamped to [0, 2^bits - 1]. */
    private fun ort(w: FloatArray, at: Int, g: Int, codes: IntArray): Float {
        val mid = 1 shl (bits - 1)
        var vmax = w[at]
        var vmin = w[at]
        for (j in at + 1 until at + g) {
            val v = w[j]
            if (v > vmax) vmax = v
            if (v < vmin) vmin = v
        }
        val signed = if (abs(vmax) > abs(vmin)) vmax else vmin
        val scale = signed / -mid.toFloat()
        val recip = if (scale != 0f) 1f / scale else 0f
        val midF = mid.toFloat()
        val top = (2 * mid - 1).toFloat()
        for (j in at until at + g) {
            val t = w[j] * recip + midF // two fp32 roundings: JVM floats never fuse
            var r = truncate(t)
            if (abs(t - r) >= 0.5f) r += sign(t)
            codes[j] = r.coerceIn(0f, top).toInt() - mid
        }
        return scale
    }

    /** coremltools linear_symmetric in numpy fp16 arithmetic: w16 = fp16(w); scale = fp16(max|w16| /
     *  qmax) (the division in fp32); q = rint(fp16(w16 / scale)) clipped to [-qmax, qmax]; a zero
     *  scale gives codes 0. */
    private fun coreml(w: FloatArray, at: Int, g: Int, codes: IntArray): Float {
        var ma = 0f
        for (j in at until at + g) {
            val a = abs(Fp16.toFloat(Fp16.fromFloat(w[j])))
            if (a > ma) ma = a
        }
        val scale = Fp16.toFloat(Fp16.fromFloat(ma / qmax.toFloat()))
        for (j in at until at + g) {
            if (scale == 0f) {
                codes[j] = 0
                continue
            }
            val w16 = Fp16.toFloat(Fp16.fromFloat(w[j]))
            val quot = Fp16.toFloat(Fp16.fromFloat(w16 / scale))
            codes[j] = Math.rint(quot.toDouble()).coerceIn(-qmax.toDouble(), qmax.toDouble()).toInt()
        }
        return scale
    }

    private fun pack(codes: IntArray): ByteArray {
        if (bits == 8) {
            return ByteArray(codes.size) { (if (isOrt) codes[it] + 128 else codes[it]).toByte() }
        }
        // two's complement nibbles on Core ML, offset by 8 on xnnpack/ort; element 2i in the low nibble
        fun nib(c: Int) = if (isCoreml) c and 0xf else c + 8
        return ByteArray(codes.size / 2) { (nib(codes[2 * it]) or (nib(codes[2 * it + 1]) shl 4)).toByte() }
    }

    private fun readScales(scale: ByteArray, n: Int): FloatArray {
        val b = ByteBuffer.wrap(scale).order(ByteOrder.LITTLE_ENDIAN)
        return FloatArray(n) {
            when (scaleDtype) {
                DType.F32 -> b.getFloat(4 * it)
                DType.BF16 -> Bf16.toFloat(b.getShort(2 * it).toInt() and 0xffff)
                else -> Fp16.toFloat(b.getShort(2 * it).toInt() and 0xffff)
            }
        }
    }

    private fun writeScales(s: FloatArray): ByteArray {
        val b = ByteBuffer.allocate(s.size * scaleDtype.size).order(ByteOrder.LITTLE_ENDIAN)
        for ((i, v) in s.withIndex()) {
            when (scaleDtype) {
                DType.F32 -> b.putFloat(4 * i, v)
                DType.BF16 -> b.putShort(2 * i, Bf16.fromFloat(v).toShort())
                else -> b.putShort(2 * i, Fp16.fromFloat(v).toShort())
            }
        }
        return b.array()
    }

    private fun checkParts(q: ByteArray, scale: ByteArray, outF: Int, inF: Int) {
        if (q.size != qBytes(outF, inF) || scale.size != scaleBytes(outF, inF)) {
            fail(ErrorCode.ENCODING, "$id parts of [$outF, $inF] are ${qBytes(outF, inF)} + ${scaleBytes(outF, inF)} bytes, " +
                "not ${q.size} + ${scale.size}")
        }
    }

    override fun toString() = id
}

object Quant {
    /** The encodings this reader knows (everything else is refused, code `encoding`). */
    val KNOWN = listOf(
        "xnnpack-int4-g32", "xnnpack-int4-g128", "xnnpack-int8-pc",
        "ort-int4-b32", "ort-int4-b128", "ort-int8-b32", "ort-int8-b128",
        "coreml-int4-b32", "coreml-int8-pc",
    )

    private val ID = Regex("^(xnnpack|ort|coreml)-int(4|8)-(g\\d+|b\\d+|pc)$")

    /** The encoding named [id]; an unknown one is refused ([ErrorCode.ENCODING]). */
    fun get(id: String): QuantEncoding {
        val m = ID.matchEntire(id)
        if (m == null || id !in KNOWN) {
            fail(ErrorCode.ENCODING, "unknown weight encoding '$id'; this reader knows ${KNOWN.joinToString(", ")}")
        }
        val grp = m.groupValues[3]
        return QuantEncoding(id, m.groupValues[1], m.groupValues[2].toInt(), if (grp == "pc") null else grp.substring(1).toInt())
    }

    /**
     * `W + scale * B @ A` as Python's `quant.device_merge`: per element, acc = 0.0; for k = 0..r-1,
     * acc += B[i,k] * A[k,j] (fp64, each product exact); acc * scale (fp64); W + that (fp64); one
     * rounding to fp32. W `[out, in]`, A `[r, in]`, B `[out, r]`, row-major.
     */
    fun deviceMerge(w: FloatArray, a: FloatArray, b: FloatArray, r: Int, scale: Double): FloatArray {
        val outF = if (r > 0) b.size / r else 0
        val inF = if (r > 0) a.size / r else 0
        if (r <= 0 || a.size != r * inF || b.size != outF * r || w.size != outF * inF) {
            fail(ErrorCode.BUILD, "lora factors A ${a.size}, B ${b.size} (r = $r) do not fit a weight of ${w.size} values")
        }
        val out = FloatArray(w.size)
        for (i in 0 until outF) {
            for (j in 0 until inF) {
                var acc = 0.0
                for (k in 0 until r) acc += b[i * r + k].toDouble() * a[k * inF + j].toDouble()
                val idx = i * inF + j
                out[idx] = (w[idx].toDouble() + acc * scale).toFloat()
            }
        }
        return out
    }

    /**
     * What a phone does with a `lora` bundle for a quantized slot: dequantize the stored parts,
     * [deviceMerge], quantize again with the backend's rule. Refuses ([ErrorCode.MERGE]) a merge
     * that gives NaN/Inf or a weight beyond +-[BundleFormat.MAX_ABS_VALUE], as the fp merge does.
     */
    fun requantize(enc: QuantEncoding, q: ByteArray, scale: ByteArray, outF: Int, inF: Int,
                   a: FloatArray, b: FloatArray, r: Int, loraScale: Double, param: String = "weight"): Pair<ByteArray, ByteArray> {
        val merged = deviceMerge(enc.dequantize(q, scale, outF, inF), a, b, r, loraScale)
        val limit = BundleFormat.MAX_ABS_VALUE.toFloat()
        for (v in merged) {
            if (!(v >= -limit && v <= limit)) {
                fail(ErrorCode.MERGE, "merge of $param produced NaN or Inf values or a weight beyond +-65504; refusing to merge (nothing was written)")
            }
        }
        return enc.quantize(merged, outF, inF)
    }
}
