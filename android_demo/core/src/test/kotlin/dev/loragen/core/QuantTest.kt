package dev.loragen.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * On-device requantization (Quant.kt) against tests/golden/quant/ (tests/golden/make_quant_golden.py,
 * the Python reference loragen_mobile/quant.py): every part, dequantized value, merged value and
 * requantized part byte for byte, for all nine encodings.
 */
class QuantTest {
    companion object {
        /** One file per encoding, as listed in quant/index.json (and in the Swift GoldenFiles.swift). */
        val FILES = listOf(
            "quant/xnnpack-int4-g32.safetensors",
            "quant/xnnpack-int4-g128.safetensors",
            "quant/xnnpack-int8-pc.safetensors",
            "quant/ort-int4-b32.safetensors",
            "quant/ort-int4-b128.safetensors",
            "quant/ort-int8-b32.safetensors",
            "quant/ort-int8-b128.safetensors",
            "quant/coreml-int4-b32.safetensors",
            "quant/coreml-int8-pc.safetensors",
        )

        fun bytes(f: SafetensorsFile, name: String): ByteArray {
            val b = f.tensorBuffer(name)
            return ByteArray(b.remaining()).also { b.get(it) }
        }

        fun floats(f: SafetensorsFile, name: String): FloatArray {
            assertEquals(DType.F32, f.tensors[name]!!.dtype)
            val b = f.tensorBuffer(name).order(ByteOrder.LITTLE_ENDIAN)
            val p = b.position()
            return FloatArray(b.remaining() / 4) { b.getFloat(p + 4 * it) }
        }

        fun f32Bytes(v: FloatArray): ByteArray {
            val b = ByteBuffer.allocate(v.size * 4).order(ByteOrder.LITTLE_ENDIAN)
            v.forEachIndexed { i, x -> b.putFloat(i * 4, x) }
            return b.array()
        }

        class Vectors(val enc: QuantEncoding, val f: SafetensorsFile) {
            val outF = f.tensors["w"]!!.shape[0].toInt()
            val inF = f.tensors["w"]!!.shape[1].toInt()
            val r = f.tensors["lora_A"]!!.shape[0].toInt()
            val loraScale = (f.header.obj("__metadata__")!!.str("lora_scale")!!).toDouble()
            val w = floats(f, "w")
            val a = floats(f, "lora_A")
            val b = floats(f, "lora_B")
            val q = bytes(f, "q")
            val scale = bytes(f, "scale")
        }

        fun vectors(rel: String): Vectors {
            val f = Golden.safetensors(rel)
            val id = f.header.obj("__metadata__")!!.str("encoding")!!
            assertEquals("quant/$id.safetensors", rel)
            return Vectors(Quant.get(id), f)
        }
    }

    @Test
    fun indexListsTheNineEncodings() {
        val index = Json.parse(File(Golden.dir, "quant/index.json").readText()) as JsonObject
        val encs = index.obj("encodings")!!
        assertEquals(Quant.KNOWN.sorted(), encs.keys.sorted())
        assertEquals(FILES.sorted(), encs.entries.map { (it.value as JsonObject).str("file")!! }.sorted())
        for ((id, e) in encs.entries) {
            e as JsonObject
            assertEquals(sha256Hex(Golden.bytes(e.str("file")!!)), e.str("sha256"))
            val enc = Quant.get(id)
            val shapes = e.obj("part_shapes")!!
            val shape = index["shape"] as List<*>
            val want = enc.partShapes((shape[0] as Long).toInt(), (shape[1] as Long).toInt())
            assertEquals(want["q"], shapes["q"])
            assertEquals(want["scale"], shapes["scale"])
            val f = Golden.safetensors(e.str("file")!!)
            assertEquals(want["q"], f.tensors["q"]!!.shape)
            assertEquals(want["scale"], f.tensors["scale"]!!.shape)
            assertEquals(want["q"], f.tensors["requant_q"]!!.shape)
            assertEquals(enc.qDtype, f.tensors["q"]!!.dtype)
            assertEquals(enc.scaleDtype, f.tensors["scale"]!!.dtype)
            assertEquals(DType.stName(e.str("q_dtype")!!), enc.qDtype.id)
            assertEquals(DType.stName(e.str("scale_dtype")!!), enc.scaleDtype.id)
        }
    }

    @Test
    fun quantizeIsBitExact() {
        for (rel in FILES) {
            val v = vectors(rel)
            val (q, s) = v.enc.quantize(v.w, v.outF, v.inF)
            assertArrayEquals("$rel q", v.q, q)
            assertArrayEquals("$rel scale", v.scale, s)
        }
    }

    @Test
    fun dequantizeIsBitExact() {
        for (rel in FILES) {
            val v = vectors(rel)
            val d = v.enc.dequantize(v.q, v.scale, v.outF, v.inF)
            assertArrayEquals("$rel dequantized", bytes(v.f, "dequantized"), f32Bytes(d))
        }
    }

    @Test
    fun deviceMergeIsBitExact() {
        for (rel in FILES) {
            val v = vectors(rel)
            val m = Quant.deviceMerge(floats(v.f, "dequantized"), v.a, v.b, v.r, v.loraScale)
            assertArrayEquals("$rel merged", bytes(v.f, "merged"), f32Bytes(m))
        }
    }

    @Test
    fun requantizeIsBitExact() {
        var changed = 0
        for (rel in FILES) {
            val v = vectors(rel)
            val (q, s) = Quant.requantize(v.enc, v.q, v.scale, v.outF, v.inF, v.a, v.b, v.r, v.loraScale)
            assertArrayEquals("$rel requant_q", bytes(v.f, "requant_q"), q)
            assertArrayEquals("$rel requant_scale", bytes(v.f, "requant_scale"), s)
            // and quantizing the stored merged weights gives the same parts
            val (q2, s2) = v.enc.quantize(floats(v.f, "merged"), v.outF, v.inF)
            assertArrayEquals(q, q2)
            assertArrayEquals(s, s2)
            if (!q.contentEquals(v.q)) changed++
        }
        assertEquals(FILES.size, changed) // the LoRA moves codes in every encoding
    }

    @Test
    fun zeroLoraRequantizesOrtAndCoreMlUnchanged() {
        // ORT and Core ML requantize their own dequantized weights to the same parts; torchao's rule
        // (scale = amax / 7.5 or / 127.5, extremes clamped) does not, so xnnpack parts move.
        for (rel in FILES) {
            val v = vectors(rel)
            val zeroB = FloatArray(v.b.size)
            val (q, s) = Quant.requantize(v.enc, v.q, v.scale, v.outF, v.inF, v.a, zeroB, v.r, v.loraScale)
            if (v.enc.family == "xnnpack") {
                assertTrue(rel, !q.contentEquals(v.q) || !s.contentEquals(v.scale))
            } else {
                assertArrayEquals("$rel q", v.q, q)
                assertArrayEquals("$rel scale", v.scale, s)
            }
        }
    }

    @Test
    fun unknownEncodingsAndBadShapesAreRefused() {
        for (id in listOf("", "xnnpack-int4-g64", "ort-int4-pc", "coreml-int8-b32", "int4", "XNNPACK-int4-g32", "ort-int2-b32")) {
            expectCode("encoding") { Quant.get(id) }
        }
        val enc = Quant.get("ort-int4-b32")
        expectCode("encoding") { enc.quantize(FloatArray(2 * 48), 2, 48) } // 48 not a multiple of 32
        expectCode("encoding") { enc.quantize(FloatArray(10), 2, 64) } // too few weights
        expectCode("encoding") { enc.dequantize(ByteArray(64), ByteArray(7), 2, 64) } // scale part size
        expectCode("encoding") { enc.dequantize(ByteArray(63), ByteArray(16), 2, 64) } // q part size
        assertEquals("encoding", ErrorCode.ENCODING.id)
        assertNotEquals(null, Quant.get("coreml-int8-pc").partShapes(3, 5)) // per-channel: any width
    }

    @Test
    fun mergesBeyondTheValueBoundAreRefused() {
        val v = vectors("quant/ort-int8-b32.safetensors")
        val bigB = FloatArray(v.b.size) { 1e6f }
        expectCode("merge") { Quant.requantize(v.enc, v.q, v.scale, v.outF, v.inF, v.a, bigB, v.r, v.loraScale) }
        val nanB = v.b.copyOf().also { it[3] = Float.NaN }
        expectCode("merge") { Quant.requantize(v.enc, v.q, v.scale, v.outF, v.inF, v.a, nanB, v.r, v.loraScale) }
        expectCode("build") { Quant.deviceMerge(v.w, v.a, v.b.copyOf(v.b.size - 1), v.r, 1.0) }
    }
}
