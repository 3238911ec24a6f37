package dev.loragen.core

import java.io.IOException
import java.io.OutputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.Channels

/**
 * ExecuTorch FlatTensor `.ptd` files (extension/flat_tensor/serialize/flat_tensor.fbs, schema
 * version 0), written and read without the flatbuffers library.
 *
 * File layout, as executorch's `FlatTensorSerializer` writes it:
 * ```
 * 0   u32  offset of the root FlatTensor table (flatbuffer root uoffset)
 * 4   "FT01" flatbuffer file identifier
 * 8   "FH01" u32 header length (40), u64 flatbuffer_offset (48), u64 flatbuffer_size,
 *          u64 segment_base_offset, u64 segment_data_size; zero padding to byte 56
 * 56  the rest of the flatbuffer (tables, vectors, strings)
 * ... zero padding to segment_base_offset (a multiple of 128)
 *     segments, each at a multiple of 128 from segment_base_offset
 * ```
 * The flatbuffer region is bytes `[0, flatbuffer_offset + flatbuffer_size)`. Tables are laid out
 * front to back (every uoffset points forward, every vtable sits just before its table), scalars are
 * naturally aligned relative to the file start, strings are NUL-terminated: what the flatbuffers
 * verifier requires.
 */
object PtdFormat {
    const val SEGMENT_ALIGNMENT = 128
    const val HEADER_LENGTH = 40
    const val PADDED_HEADER_LENGTH = 48
    const val VERSION = 0

    /** executorch_flatbuffer.ScalarType codes. */
    fun scalarType(d: DType): Int = when (d) {
        DType.U8 -> 0; DType.I8 -> 1; DType.I32 -> 3; DType.I64 -> 4
        DType.F16 -> 5; DType.F32 -> 6; DType.BF16 -> 15
    }
}

/** Optional tensor metadata of a named blob (XNNPACK's delegate blobs carry none). */
data class TensorLayout(val scalarType: Int, val sizes: List<Int>, val dimOrder: List<Int>) {
    companion object {
        fun contiguous(d: DType, shape: List<Long>) =
            TensorLayout(PtdFormat.scalarType(d), shape.map { it.toInt() }, shape.indices.toList())
    }
}

class PtdEntry(val key: String, val data: ByteBuffer, val layout: TensorLayout? = null)

object PtdWriter {
    /**
     * The artifact's data file with a swap plan applied, as ExecuTorch's stock runners load it (one
     * data file: `LlmModule(..., listOf(path))`): a byte copy of [base] (the artifact's `model.ptd`)
     * with each tensor's bytes written over its slot's segment. Keys, layouts and every other byte are
     * unchanged, so the result equals Python's `apply_swap` output byte for byte. Each tensor's key
     * must name a segment of exactly its size; when the slot records `offset`, it must be where that
     * segment starts.
     */
    fun writeSwapped(base: ByteSource, plan: List<SwapTensor>, out: OutputStream) {
        val ptd = PtdFile.read(base)
        val patches = java.util.TreeMap<Long, SwapTensor>()
        for (t in plan) {
            val key = t.key ?: fail(ErrorCode.SLOT, "swap slot of ${t.param} has no data key")
            val (idx, _) = ptd.namedData[key] ?: fail(ErrorCode.SLOT, "the artifact's .ptd has no entry $key for ${t.param}")
            val (off, size) = ptd.segments[idx]
            val at = ptd.segmentBaseOffset + off
            if (size != t.nbytes.toLong()) fail(ErrorCode.SLOT, "${t.param}: .ptd segment holds $size bytes, the tensor has ${t.nbytes}")
            t.offset?.let { if (it != at) fail(ErrorCode.SLOT, "${t.param}: slot offset $it is not its .ptd segment's offset $at") }
            if (patches.put(at, t) != null) fail(ErrorCode.SLOT, "two swap tensors share the .ptd segment of ${t.param}")
        }
        val ch = Channels.newChannel(out)
        var pos = 0L
        fun copyTo(end: Long) {
            while (pos < end) {
                val n = minOf(end - pos, 1L shl 24)
                val b = base.slice(pos, n)
                while (b.hasRemaining()) ch.write(b)
                pos += n
            }
        }
        for ((at, t) in patches) {
            copyTo(at)
            val d = t.data
            while (d.hasRemaining()) ch.write(d)
            pos = at + t.nbytes
        }
        copyTo(base.size)
        out.flush()
    }

    /** The swap `.ptd` for a swap plan: each tensor under its slot's data key, no layout (as exported). */
    fun entriesFor(plan: List<SwapTensor>, withLayout: Boolean = false): List<PtdEntry> = plan.map {
        PtdEntry(it.key ?: fail(ErrorCode.SLOT, "swap slot of ${it.param} has no data key"), it.data,
            if (withLayout) TensorLayout.contiguous(it.dtype, it.shape) else null)
    }

    /** Writes a `.ptd`: the flatbuffer is built in memory (small), the segment bytes are streamed. */
    fun write(entries: List<PtdEntry>, out: OutputStream) {
        val keys = HashSet<String>()
        for (e in entries) require(keys.add(e.key)) { "duplicate data key ${e.key}" }
        // segment placement
        val offsets = LongArray(entries.size)
        var end = 0L
        for ((i, e) in entries.withIndex()) {
            offsets[i] = align(end, PtdFormat.SEGMENT_ALIGNMENT.toLong())
            end = offsets[i] + e.data.remaining()
        }
        val segmentDataSize = end
        val fb = Fb()
        fb.pos = 8 + PtdFormat.PADDED_HEADER_LENGTH
        // root FlatTensor: version u32 (id 0), segments (id 1), named_data (id 2)
        val root = fb.table(16, intArrayOf(4, 8, 12))
        fb.u32(root + 4, PtdFormat.VERSION.toLong())
        // segments vector
        val segVec = fb.vector(entries.size, 4, 4)
        fb.uoffset(root + 8, segVec)
        for (i in entries.indices) {
            val t = fb.table(20, intArrayOf(4, 12), tableAlign8 = true)
            fb.u64(t + 4, offsets[i])
            fb.u64(t + 12, entries[i].data.remaining().toLong())
            fb.uoffset(segVec + 4 + 4 * i, t)
        }
        val ndVec = fb.vector(entries.size, 4, 4)
        fb.uoffset(root + 12, ndVec)
        for ((i, e) in entries.withIndex()) {
            val hasLayout = e.layout != null
            val t = fb.table(if (hasLayout) 16 else 12, if (hasLayout) intArrayOf(4, 8, 12) else intArrayOf(4, 8))
            fb.uoffset(ndVec + 4 + 4 * i, t)
            fb.u32(t + 8, i.toLong())
            fb.uoffset(t + 4, fb.string(e.key))
            val l = e.layout ?: continue
            // TensorLayout: scalar_type byte (id 0), sizes [int32] (id 1), dim_order [uint8] (id 2)
            val lt = fb.table(16, intArrayOf(12, 4, 8))
            fb.uoffset(t + 12, lt)
            fb.u8(lt + 12, l.scalarType)
            val sv = fb.vector(l.sizes.size, 4, 4)
            l.sizes.forEachIndexed { k, s -> fb.u32(sv + 4 + 4 * k, s.toLong() and 0xffffffffL) }
            fb.uoffset(lt + 4, sv)
            val dv = fb.vector(l.dimOrder.size, 1, 4)
            l.dimOrder.forEachIndexed { k, d -> fb.u8(dv + 4 + k, d) }
            fb.uoffset(lt + 8, dv)
        }
        fb.alignTo(8)
        val fbEnd = fb.pos
        val base = align(fbEnd.toLong(), PtdFormat.SEGMENT_ALIGNMENT.toLong())
        // prefix: root offset, identifier, FH01 header
        fb.u32(0, root.toLong())
        fb.bytes(4, "FT01".toByteArray(Charsets.US_ASCII))
        fb.bytes(8, "FH01".toByteArray(Charsets.US_ASCII))
        fb.u32(12, PtdFormat.HEADER_LENGTH.toLong())
        fb.u64(16, PtdFormat.PADDED_HEADER_LENGTH.toLong())
        fb.u64(24, (fbEnd - PtdFormat.PADDED_HEADER_LENGTH).toLong())
        fb.u64(32, base)
        fb.u64(40, segmentDataSize)
        out.write(fb.buf, 0, fbEnd)
        writeZeros(out, base - fbEnd)
        val ch = Channels.newChannel(out)
        var written = 0L
        for ((i, e) in entries.withIndex()) {
            writeZeros(out, offsets[i] - written)
            val d = e.data.duplicate()
            while (d.hasRemaining()) ch.write(d)
            written = offsets[i] + e.data.remaining()
        }
        out.flush()
    }

    fun toBytes(entries: List<PtdEntry>): ByteArray {
        val bos = java.io.ByteArrayOutputStream()
        write(entries, bos)
        return bos.toByteArray()
    }

    private fun writeZeros(out: OutputStream, n: Long) {
        val z = ByteArray(4096)
        var left = n
        while (left > 0) {
            val k = minOf(left, z.size.toLong()).toInt()
            out.write(z, 0, k)
            left -= k
        }
    }

    internal fun align(v: Long, a: Long) = (v + a - 1) / a * a

    /** A tiny front-to-back flatbuffer builder with absolute positions. */
    private class Fb {
        var buf = ByteArray(1024)
        var pos = 0

        fun ensure(n: Int) {
            if (n > buf.size) buf = buf.copyOf(maxOf(n, buf.size * 2))
        }

        fun alignTo(a: Int) {
            while (pos % a != 0) pos++
            ensure(pos)
        }

        /** vtable then table; fieldOffsets[i] is field i's offset in the table. Returns the table position. */
        fun table(tableSize: Int, fieldOffsets: IntArray, tableAlign8: Boolean = false): Int {
            alignTo(2)
            val vt = pos
            val vtSize = 4 + 2 * fieldOffsets.size
            pos += vtSize
            // table: 4-aligned (soffset); 4 mod 8 when it holds u64 fields at +4 and +12
            while (pos % 4 != 0 || (tableAlign8 && pos % 8 != 4)) pos++
            val t = pos
            pos += tableSize
            ensure(pos)
            u16(vt, vtSize)
            u16(vt + 2, tableSize)
            fieldOffsets.forEachIndexed { i, o -> u16(vt + 4 + 2 * i, o) }
            u32(t, (t - vt).toLong()) // soffset: vtable = table - soffset
            return t
        }

        fun vector(count: Int, elemSize: Int, align: Int): Int {
            alignTo(maxOf(4, align))
            val v = pos
            pos += 4 + count * elemSize
            ensure(pos)
            u32(v, count.toLong())
            return v
        }

        fun string(s: String): Int {
            val b = s.toByteArray(Charsets.UTF_8)
            alignTo(4)
            val p = pos
            pos += 4 + b.size + 1
            ensure(pos)
            u32(p, b.size.toLong())
            bytes(p + 4, b)
            buf[p + 4 + b.size] = 0
            return p
        }

        fun uoffset(at: Int, target: Int) {
            check(target > at) { "flatbuffer offsets must point forward" }
            u32(at, (target - at).toLong())
        }

        fun u8(at: Int, v: Int) { ensure(at + 1); buf[at] = v.toByte() }
        fun u16(at: Int, v: Int) { ensure(at + 2); buf[at] = v.toByte(); buf[at + 1] = (v shr 8).toByte() }
        fun u32(at: Int, v: Long) { ensure(at + 4); for (i in 0 until 4) buf[at + i] = (v shr (8 * i)).toByte() }
        fun u64(at: Int, v: Long) { ensure(at + 8); for (i in 0 until 8) buf[at + i] = (v shr (8 * i)).toByte() }
        fun bytes(at: Int, b: ByteArray) { ensure(at + b.size); System.arraycopy(b, 0, buf, at, b.size) }
    }
}

/** A `.ptd` read back: key -> segment (memory-mapped for files), with optional tensor layout. */
class PtdFile private constructor(
    val source: ByteSource,
    val segmentBaseOffset: Long,
    val segments: List<Pair<Long, Long>>,
    /** key -> (segment index, layout), in file order. */
    val namedData: LinkedHashMap<String, Pair<Int, TensorLayout?>>,
    val version: Long,
) {
    val keys: Set<String> get() = namedData.keys

    fun buffer(key: String): ByteBuffer? {
        val (idx, _) = namedData[key] ?: return null
        val (off, size) = segments[idx]
        return source.slice(segmentBaseOffset + off, size)
    }

    fun layout(key: String): TensorLayout? = namedData[key]?.second

    companion object {
        fun read(source: ByteSource): PtdFile {
            if (source.size < 48) throw IOException("not a .ptd file: too short")
            val head = ByteBuffer.wrap(source.readBytes(0, 48)).order(ByteOrder.LITTLE_ENDIAN)
            val ident = String(ByteArray(4) { head.get(4 + it) }, Charsets.US_ASCII)
            val magic = String(ByteArray(4) { head.get(8 + it) }, Charsets.US_ASCII)
            if (!ident.startsWith("FT") || magic != "FH01" || head.getInt(12) < 40) throw IOException("not a .ptd file (identifier $ident, header $magic)")
            val fo = head.getLong(16)
            val fs = head.getLong(24)
            val base = head.getLong(32)
            val segSize = head.getLong(40)
            if (fo < 0 || fs < 0 || fo + fs > source.size || fo + fs > Int.MAX_VALUE || base < 0 || base + segSize > source.size) {
                throw IOException(".ptd header offsets are out of range")
            }
            val fb = Reader(ByteBuffer.wrap(source.readBytes(0, (fo + fs).toInt())).order(ByteOrder.LITTLE_ENDIAN))
            val root = fb.deref(0)
            val version = fb.scalarU32(root, 0)
            val segments = ArrayList<Pair<Long, Long>>()
            fb.vectorOfTables(root, 1) { t -> segments.add(fb.scalarU64(t, 0) to fb.scalarU64(t, 1)) }
            for ((o, s) in segments) if (o < 0 || s < 0 || o + s > segSize) throw IOException(".ptd segment out of range")
            val named = LinkedHashMap<String, Pair<Int, TensorLayout?>>()
            fb.vectorOfTables(root, 2) { t ->
                val key = fb.string(t, 0) ?: throw IOException(".ptd named data without a key")
                val idx = fb.scalarU32(t, 1).toInt()
                if (idx !in segments.indices) throw IOException(".ptd segment index out of range")
                val lt = fb.field(t, 2)?.let { fb.deref(it) }
                val layout = lt?.let {
                    TensorLayout(fb.scalarU8(it, 0), fb.intVector(it, 1), fb.byteVector(it, 2))
                }
                if (named.put(key, idx to layout) != null) throw IOException(".ptd has duplicate key $key")
            }
            return PtdFile(source, base, segments, named, version)
        }
    }

    private class Reader(val b: ByteBuffer) {
        fun u32(at: Int): Long = b.getInt(check(at, 4)).toLong() and 0xffffffffL
        fun check(at: Int, n: Int): Int {
            if (at < 0 || at + n > b.limit()) throw IOException(".ptd flatbuffer offset out of range")
            return at
        }
        fun deref(at: Int): Int = (at + u32(at)).toInt().also { check(it, 4) }

        /** Absolute position of field [id] of the table at [t], or null when absent (default). */
        fun field(t: Int, id: Int): Int? {
            val vt = t - b.getInt(check(t, 4))
            val vtSize = b.getShort(check(vt, 4)).toInt() and 0xffff
            val slot = 4 + 2 * id
            if (slot + 2 > vtSize) return null
            val off = b.getShort(check(vt + slot, 2)).toInt() and 0xffff
            return if (off == 0) null else t + off
        }

        fun scalarU8(t: Int, id: Int): Int = field(t, id)?.let { b.get(check(it, 1)).toInt() } ?: 0
        fun scalarU32(t: Int, id: Int): Long = field(t, id)?.let { u32(it) } ?: 0L
        fun scalarU64(t: Int, id: Int): Long = field(t, id)?.let { b.getLong(check(it, 8)) } ?: 0L

        fun string(t: Int, id: Int): String? {
            val p = field(t, id)?.let { deref(it) } ?: return null
            val n = u32(p).toInt()
            val a = ByteArray(n)
            b.duplicate().position(check(p + 4, n)).get(a)
            return String(a, Charsets.UTF_8)
        }

        fun vectorOfTables(t: Int, id: Int, each: (Int) -> Unit) {
            val v = field(t, id)?.let { deref(it) } ?: return
            val n = u32(v).toInt()
            for (i in 0 until n) each(deref(v + 4 + 4 * i))
        }

        fun intVector(t: Int, id: Int): List<Int> {
            val v = field(t, id)?.let { deref(it) } ?: return emptyList()
            val n = u32(v).toInt()
            return List(n) { b.getInt(check(v + 4 + 4 * it, 4)) }
        }

        fun byteVector(t: Int, id: Int): List<Int> {
            val v = field(t, id)?.let { deref(it) } ?: return emptyList()
            val n = u32(v).toInt()
            return List(n) { b.get(check(v + 4 + it, 1)).toInt() and 0xff }
        }
    }
}
