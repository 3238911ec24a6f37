package dev.loragen.core

import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest

/**
 * One replacement tensor: where the backend keeps it ([locator]: `file` plus `key` and/or
 * `offset`, `header_offset`) and its new bytes ([data], little-endian, C order, slot dtype).
 *
 * - ExecuTorch: write [data] under data key `locator.key` into a new `.ptd` ([PtdWriter]).
 * - ONNX: pass [data] as the external initializer named `locator.key`.
 * - Core ML: write [data] at byte `locator.offset` of a copy of `locator.file`.
 */
class SwapTensor(
    val param: String,
    val locator: JsonObject,
    val dtype: DType,
    val shape: List<Long>,
    data: ByteBuffer,
) {
    private val bytes: ByteBuffer = data.asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN)

    /** A fresh read-only view (position 0) of the bytes; share freely. */
    val data: ByteBuffer get() = bytes.duplicate().order(ByteOrder.LITTLE_ENDIAN)

    val key: String? get() = locator.str("key")
    val file: String? get() = locator.str("file")
    val offset: Long? get() = (locator["offset"] as? Long)
    val nbytes: Int get() = bytes.remaining()

    fun sha256(): String {
        val md = MessageDigest.getInstance("SHA-256")
        md.update(data)
        return Hex.encode(md.digest())
    }
}

/** The base (artifact's own) value of a swappable tensor, needed to merge a lora bundle on device. */
fun interface BaseValues {
    /** The tensor's bytes (slot dtype, C order), or null if unknown. */
    fun get(param: String, slot: JsonObject): ByteBuffer?

    companion object {
        /** From a safetensors file keyed by parameter name (e.g. tests/golden/base/...). */
        fun fromSafetensors(f: SafetensorsFile) = BaseValues { p, _ -> if (p in f.tensors) f.tensorBuffer(p) else null }

        /** ONNX: the artifact's `swap.onnx.data`, each slot at its `offset` with `nbytes`. */
        fun fromOnnxSwapData(swapData: ByteSource) = BaseValues { _, slot ->
            val off = slot["offset"] as? Long
            val n = slot["nbytes"] as? Long
            if (off == null || n == null) null else swapData.slice(off, n)
        }

        /** ExecuTorch: the artifact's `swap.ptd`, each slot under its data `key`. */
        fun fromPtd(ptd: PtdFile) = BaseValues { _, slot -> slot.str("key")?.let { ptd.buffer(it) } }
    }
}

object SwapPlan {
    /**
     * Parameter -> replacement for every tensor the bundle swaps, sorted by parameter name
     * (Python `core.swap_tensors`). merged: the bundle's tensors (memory views, no copy).
     * lora: W + scale * (B @ A) merged here ([LoraMerge]) from [base] in the slot dtype.
     */
    fun build(vb: VerifiedBundle, base: BaseValues? = null): List<SwapTensor> {
        val entries = vb.manifest.obj("tensors")!!
        val slots = vb.artifact.slotsByParam
        val out = ArrayList<SwapTensor>()
        if (vb.kind == "merged") {
            for ((name, ev) in entries.entries) {
                val e = ev as JsonObject
                val param = e.str("param")!!
                val te = vb.parsed.tensors.getValue(name)
                out.add(SwapTensor(param, Artifact.locator(slots.getValue(param)), te.dtype, te.shape, vb.parsed.container.tensorBuffer(name)))
            }
        } else {
            if (base == null) fail(ErrorCode.BUILD, "a lora bundle needs the artifact's base values to merge on the device")
            val lora = vb.manifest.obj("lora")!!
            // Python: LoraAdapter(r=int(r), alpha=float(alpha)).scale, an fp64 value used as addmm's alpha
            val r = lora["r"] as Long
            val scale = (JsonValues.num(lora["alpha"])!! / r).toFloat()
            for ((name, ev) in entries.entries) {
                if (!name.endsWith(".lora_A")) continue
                val param = (ev as JsonObject).str("param")!!
                val module = BundleVerifier.moduleOf(param)
                val slot = slots.getValue(param)
                val te = vb.parsed.tensors.getValue(name)
                val shape = (slot["shape"] as List<*>).map { (it as Number).toLong() }
                val w = base.get(param, slot) ?: fail(ErrorCode.BUILD, "base value missing for swap slot $param")
                val merged = LoraMerge.merge(
                    param, te.dtype, shape,
                    w, vb.parsed.container.tensorBuffer(name), vb.parsed.container.tensorBuffer("$module.lora_B"), scale,
                )
                out.add(SwapTensor(param, Artifact.locator(slot), te.dtype, shape, merged))
            }
        }
        out.sortWith { a, b -> CodePointOrder.compare(a.param, b.param) }
        return out
    }
}

/**
 * W' = W + scale * (B @ A) for one weight (W: out x in, A: r x in, B: out x r), all in the slot
 * dtype (F32, F16 or BF16), accumulated in fp32 and rounded once to the slot dtype.
 *
 * Arithmetic, fixed so every device gives the same bits: for each element,
 * `acc = fma(B[i,k], A[k,j], acc)` for k = 0..r-1 from acc = 0, then `fma(scale, acc, W[i,j])`
 * in fp32, then (fp16/bf16 slots) one round-to-nearest-even. Python's host merge accumulates in fp64
 * and rounds once, so for fp32 slots the two agree exactly only where this fp32 sequence gives the
 * correctly rounded value (see android_demo/README.md for the measured difference and the bound
 * `|kotlin - python| <= (r + 2) * 2^-24 * (|W| + |scale| * sum_k |B[i,k]| |A[k,j]|)` that the
 * tests assert); for fp16 slots the final rounding absorbs the difference on the golden vectors.
 *
 * Like Python, refuses NaN/Inf or values beyond the dtype's finite range ([ErrorCode.MERGE]).
 */
object LoraMerge {
    fun merge(param: String, dtype: DType, wShape: List<Long>, w: ByteBuffer, a: ByteBuffer, b: ByteBuffer, scale: Float): ByteBuffer {
        require(wShape.size == 2)
        val outF = wShape[0].toInt()
        val inF = wShape[1].toInt()
        val es = dtype.size
        if (w.remaining().toLong() != wShape[0] * wShape[1] * es) fail(ErrorCode.BUILD, "base value of $param has ${w.remaining()} bytes, expected ${wShape[0] * wShape[1] * es}")
        val r = a.remaining() / es / inF
        if (a.remaining() != r * inF * es || b.remaining() != outF * r * es) fail(ErrorCode.BUILD, "lora factors of $param do not fit ${wShape}")
        val af = toFloats(a, dtype)
        val bf = toFloats(b, dtype)
        val wl = w.duplicate().order(ByteOrder.LITTLE_ENDIAN)
        // every merged weight is finite with |w| <= MAX_ABS_VALUE (65504, fp16's largest), whatever the slot dtype
        val limit = when (dtype) {
            DType.F32, DType.F16, DType.BF16 -> BundleFormat.MAX_ABS_VALUE.toFloat()
            else -> fail(ErrorCode.BUILD, "lora merge needs a floating-point slot; $param is ${dtype.id}")
        }
        val out = ByteBuffer.allocate(outF * inF * es).order(ByteOrder.LITTLE_ENDIAN)
        val acc = FloatArray(inF)
        val base0 = wl.position()
        for (i in 0 until outF) {
            java.util.Arrays.fill(acc, 0f)
            for (k in 0 until r) {
                val bik = bf[i * r + k]
                val row = k * inF
                for (j in 0 until inF) acc[j] = Fma.fma(bik, af[row + j], acc[j])
            }
            for (j in 0 until inF) {
                val idx = i * inF + j
                val wv = readFloat(wl, base0 + idx * es, dtype)
                val v = Fma.fma(scale, acc[j], wv)
                if (!(v >= -limit && v <= limit)) {
                    fail(ErrorCode.MERGE, "merge of $param produced NaN or Inf values or a weight beyond +-65504; refusing to merge (nothing was written)")
                }
                when (dtype) {
                    DType.F32 -> out.putFloat(idx * 4, v)
                    DType.F16 -> out.putShort(idx * 2, Fp16.fromFloat(v).toShort())
                    else -> out.putShort(idx * 2, Bf16.fromFloat(v).toShort())
                }
            }
        }
        return out
    }

    fun toFloats(buf: ByteBuffer, dtype: DType): FloatArray {
        val b = buf.duplicate().order(ByteOrder.LITTLE_ENDIAN)
        val p = b.position()
        val n = b.remaining() / dtype.size
        return FloatArray(n) { readFloat(b, p + it * dtype.size, dtype) }
    }

    private fun readFloat(b: ByteBuffer, at: Int, dtype: DType): Float = when (dtype) {
        DType.F32 -> b.getFloat(at)
        DType.F16 -> Fp16.toFloat(b.getShort(at).toInt() and 0xffff)
        DType.BF16 -> Bf16.toFloat(b.getShort(at).toInt() and 0xffff)
        else -> fail(ErrorCode.BUILD, "not a floating-point dtype: ${dtype.id}")
    }
}

/** bfloat16 <-> float32 (round to nearest even; NaN stays NaN). */
object Bf16 {
    fun toFloat(h: Int): Float = java.lang.Float.intBitsToFloat((h and 0xffff) shl 16)
    fun fromFloat(f: Float): Int {
        val bits = java.lang.Float.floatToRawIntBits(f)
        if (f.isNaN()) return ((bits ushr 16) or 0x40) and 0xffff
        val lsb = (bits ushr 16) and 1
        return ((bits + 0x7fff + lsb) ushr 16) and 0xffff
    }
}
