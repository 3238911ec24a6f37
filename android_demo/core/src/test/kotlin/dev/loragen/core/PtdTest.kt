package dev.loragen.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

class PtdTest {
    private fun bytesOf(b: ByteBuffer): ByteArray = ByteArray(b.remaining()).also { b.duplicate().get(it) }

    @Test
    fun readsFlatcWrittenFile() {
        // src/test/resources/flatc-sample.ptd: written by executorch's FlatTensorSerializer (flatc),
        // see android_demo/core/tools/make_ptd_fixture.py
        val raw = javaClass.getResourceAsStream("/flatc-sample.ptd")!!.readBytes()
        assertEquals(896, raw.size)
        val f = PtdFile.read(ByteSource.of(raw))
        val long = "0123456789abcdef".repeat(4)
        assertEquals(listOf("first", long, "empty"), f.keys.toList())
        assertEquals(0L, f.version)
        assertArrayEquals(ByteArray(10) { (it + 1).toByte() }, bytesOf(f.buffer("first")!!))
        assertArrayEquals(ByteArray(200) { 0xAB.toByte() }, bytesOf(f.buffer(long)!!))
        assertEquals(0, f.buffer("empty")!!.remaining())
        assertNull(f.layout("first"))
        assertEquals(TensorLayout(6, listOf(10, 5), listOf(0, 1)), f.layout(long))
        assertEquals(512L, f.segmentBaseOffset) // 48 + 344 flatbuffer bytes, aligned to 128
        assertEquals(listOf(0L to 10L, 128L to 200L, 384L to 0L), f.segments)
        assertNull(f.buffer("missing"))
    }

    @Test
    fun writerLayoutMatchesSerializer() {
        val entries = listOf(
            PtdEntry("first", ByteBuffer.wrap(ByteArray(10) { (it + 1).toByte() })),
            PtdEntry("0123456789abcdef".repeat(4), ByteBuffer.wrap(ByteArray(200) { 0xAB.toByte() }), TensorLayout(6, listOf(10, 5), listOf(0, 1))),
            PtdEntry("empty", ByteBuffer.allocate(0)),
        )
        val raw = PtdWriter.toBytes(entries)
        val h = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN)
        assertEquals("FT01", String(raw, 4, 4, Charsets.US_ASCII))
        assertEquals("FH01", String(raw, 8, 4, Charsets.US_ASCII))
        assertEquals(40, h.getInt(12))
        assertEquals(48L, h.getLong(16)) // flatbuffer_offset = padded header length, as the serializer
        val fbSize = h.getLong(24)
        val base = h.getLong(32)
        assertEquals(0L, base % 128)
        assertEquals(base, (48 + fbSize + 127) / 128 * 128)
        assertEquals(384L, h.getLong(40)) // segments at 0 (10 B), 128 (200 B), 384 (0 B)
        assertEquals(base + 384, raw.size.toLong())
        // segment data sits at base + 128 * i, zero padded
        assertArrayEquals(ByteArray(10) { (it + 1).toByte() }, raw.copyOfRange(base.toInt(), base.toInt() + 10))
        assertTrue(raw.copyOfRange(base.toInt() + 10, base.toInt() + 128).all { it.toInt() == 0 })
        val back = PtdFile.read(ByteSource.of(raw))
        assertEquals(entries.map { it.key }, back.keys.toList())
        for (e in entries) assertArrayEquals(bytesOf(e.data), bytesOf(back.buffer(e.key)!!))
        assertEquals(entries[1].layout, back.layout(entries[1].key))
        assertNull(back.layout("first"))
        Golden.dump?.let { File(it, "kotlin-sample.ptd").writeBytes(raw) }
    }

    @Test
    fun executorchSwapPtdFromBundles() {
        val art = Golden.artifact("executorch")
        val base = BaseValues.fromSafetensors(Golden.safetensors("base/executorch.safetensors"))
        for (n in listOf("executorch-merged", "executorch-lora")) {
            val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle(n)), art, Golden.publicKey)
            val plan = SwapPlan.build(vb, base)
            val file = File.createTempFile("swap-", ".ptd")
            try {
                file.outputStream().use { PtdWriter.write(PtdWriter.entriesFor(plan), it) }
                val ptd = PtdFile.read(ByteSource.open(file))
                val slotKeys = art.slotsByParam.values.map { it.str("key")!! }
                assertEquals(slotKeys.toSet(), ptd.keys)
                for (t in plan) {
                    assertEquals(t.sha256(), sha256Hex(bytesOf(ptd.buffer(t.key!!)!!)))
                    assertNull(ptd.layout(t.key!!)) // XNNPACK blobs carry no layout, as the exporter writes them
                }
                // the base values read back through a .ptd give the same lora merge (BaseValues.fromPtd)
                if (n == "executorch-merged") {
                    val baseEntries = art.slotsByParam.values.map { s ->
                        PtdEntry(s.str("key")!!, Golden.safetensors("base/executorch.safetensors").tensorBuffer(s.str("name")!!))
                    }
                    val basePtd = PtdFile.read(ByteSource.of(PtdWriter.toBytes(baseEntries)))
                    val lora = BundleVerifier.verify(ByteSource.of(Golden.bundle("executorch-lora")), art, Golden.publicKey)
                    val viaPtd = SwapPlan.build(lora, BaseValues.fromPtd(basePtd)).map { it.sha256() }
                    val viaSt = SwapPlan.build(lora, base).map { it.sha256() }
                    assertEquals(viaSt, viaPtd)
                }
                Golden.dump?.let { file.copyTo(File(it, "swap-$n.ptd"), overwrite = true) }
            } finally {
                file.delete()
            }
        }
    }

    @Test
    fun swappedCopyOfTheArtifactPtd() {
        // an artifact's model.ptd: a foundation entry, then every swap slot under its key
        val art = Golden.artifact("executorch")
        val st = Golden.safetensors("base/executorch.safetensors")
        val foundation = PtdEntry("foundation-weight", ByteBuffer.wrap(ByteArray(300) { (it * 7).toByte() }),
            TensorLayout(6, listOf(75), listOf(0)))
        val baseRaw = PtdWriter.toBytes(listOf(foundation) + art.slotsByParam.values.map { s ->
            PtdEntry(s.str("key")!!, st.tensorBuffer(s.str("name")!!))
        })
        val base = PtdFile.read(ByteSource.of(baseRaw))
        for (n in listOf("executorch-merged", "executorch-lora")) {
            val vb = BundleVerifier.verify(ByteSource.of(Golden.bundle(n)), art, Golden.publicKey)
            val plan = SwapPlan.build(vb, BaseValues.fromPtd(base))
            val bos = java.io.ByteArrayOutputStream()
            PtdWriter.writeSwapped(ByteSource.of(baseRaw), plan, bos)
            val raw = bos.toByteArray()
            assertEquals(baseRaw.size, raw.size)
            val back = PtdFile.read(ByteSource.of(raw))
            assertEquals(base.keys.toList(), back.keys.toList())
            assertEquals(base.segments, back.segments)
            assertArrayEquals(bytesOf(foundation.data), bytesOf(back.buffer(foundation.key)!!))
            assertEquals(foundation.layout, back.layout(foundation.key))
            for (t in plan) assertEquals(t.sha256(), sha256Hex(bytesOf(back.buffer(t.key!!)!!)))
            // every changed byte lies in a swapped segment
            val swapped = plan.map { t -> base.segments[base.namedData[t.key!!]!!.first].let { (o, sz) -> base.segmentBaseOffset + o until base.segmentBaseOffset + o + sz } }
            val changed = raw.indices.filter { raw[it] != baseRaw[it] }
            assertTrue(changed.isNotEmpty())
            assertTrue(changed.all { i -> swapped.any { i.toLong() in it } })
        }
        // a tensor whose size is not its segment's, or whose recorded offset is not the segment's: refused
        val t = SwapPlan.build(BundleVerifier.verify(ByteSource.of(Golden.bundle("executorch-merged")), art, Golden.publicKey), null).first()
        val seg = base.segments[base.namedData[t.key!!]!!.first]
        fun retarget(vararg kv: Pair<String, Any?>) = SwapTensor(t.param, JsonObject(linkedMapOf(*kv)), t.dtype, t.shape, t.data)
        val sink = java.io.ByteArrayOutputStream()
        expectCode("slot") { PtdWriter.writeSwapped(ByteSource.of(baseRaw), listOf(retarget("key" to foundation.key)), sink) }
        expectCode("slot") { PtdWriter.writeSwapped(ByteSource.of(baseRaw), listOf(retarget("key" to "missing")), sink) }
        expectCode("slot") {
            PtdWriter.writeSwapped(ByteSource.of(baseRaw), listOf(retarget("key" to t.key, "offset" to base.segmentBaseOffset + seg.first + 128)), sink)
        }
        PtdWriter.writeSwapped(ByteSource.of(baseRaw), listOf(retarget("key" to t.key, "offset" to base.segmentBaseOffset + seg.first)), sink)
    }

    @Test
    fun rejectsNonPtd() {
        for (raw in listOf(ByteArray(10), ByteArray(64), Golden.bundle("executorch-merged"))) {
            try {
                PtdFile.read(ByteSource.of(raw))
                org.junit.Assert.fail("read a non-.ptd file")
            } catch (e: java.io.IOException) {
                // expected
            }
        }
    }
}
