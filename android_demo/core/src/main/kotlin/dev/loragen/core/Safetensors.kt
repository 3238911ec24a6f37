package dev.loragen.core

import java.io.IOException
import java.math.BigInteger
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.charset.CharacterCodingException
import java.nio.charset.CodingErrorAction
import java.security.MessageDigest

/** safetensors dtypes a bundle may carry, with their element size in bytes. */
enum class DType(val id: String, val size: Int) {
    F32("F32", 4), F16("F16", 2), BF16("BF16", 2), I8("I8", 1), U8("U8", 1), I32("I32", 4), I64("I64", 8);

    companion object {
        fun of(id: String): DType? = values().firstOrNull { it.id == id }

        private val NAMES = mapOf(
            "float32" to "F32", "fp32" to "F32", "float16" to "F16", "fp16" to "F16", "bfloat16" to "BF16",
            "bf16" to "BF16", "int8" to "I8", "uint8" to "U8", "int32" to "I32", "int64" to "I64",
        )

        /** The safetensors code for a dtype name used in artifact.json (Python `core.st_dtype`). */
        fun stName(name: String): String {
            val s = name.replace("torch.", "")
            return NAMES[s.lowercase()] ?: s.uppercase()
        }
    }
}

class TensorEntry(val name: String, val dtype: DType, val shape: List<Long>, val begin: Long, val end: Long) {
    val nbytes: Long get() = end - begin
    val numel: Long get() = shape.fold(1L) { a, b -> a * b }
}

/**
 * The safetensors container: 8-byte little-endian header length N, N bytes of UTF-8 JSON, data.
 * Only the header is read into memory (at most [MAX_HEADER_BYTES]); tensor data stays in the
 * [ByteSource] and is reached through [tensorBuffer] (a memory map for files) or streamed.
 */
class SafetensorsFile internal constructor(
    val source: ByteSource,
    val headerLen: Long,
    /** The raw header bytes (kept: the signing digest is located in them). */
    val headerBytes: ByteArray,
    val header: JsonObject,
    val tensors: Map<String, TensorEntry>,
) {
    val dataStart: Long get() = 8 + headerLen

    fun tensorBuffer(name: String): ByteBuffer {
        val e = tensors[name] ?: throw NoSuchElementException(name)
        return source.slice(dataStart + e.begin, e.nbytes)
    }

    /** SHA-256 (lowercase hex) of a tensor's bytes, streamed in 1 MiB chunks. */
    fun tensorSha256(name: String): String {
        val e = tensors[name] ?: throw NoSuchElementException(name)
        return Hex.encode(sha256Range(source, dataStart + e.begin, e.nbytes))
    }

    companion object {
        const val MAX_HEADER_BYTES = 16L * 1024 * 1024

        /** A plain safetensors file (base values, expected tensors): same checks as a bundle's container. */
        fun read(source: ByteSource): SafetensorsFile {
            val (n, bytes, header) = readHeader(source)
            val tensors = parseEntries(header, source.size - 8 - n)
            return SafetensorsFile(source, n, bytes, header, tensors)
        }

        internal fun readHeader(source: ByteSource): Triple<Long, ByteArray, JsonObject> {
            val size = source.size
            if (size < 8) fail(ErrorCode.TRUNCATED, "bundle is truncated: $size bytes, shorter than the 8-byte header length")
            val lenBuf = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN)
            io { source.read(0, lenBuf) }
            val n = lenBuf.getLong(0) // unsigned: a value >= 2^63 reads negative
            if (n < 0 || n > size - 8) {
                fail(ErrorCode.HEADER_LENGTH, "bundle header length ${java.lang.Long.toUnsignedString(n)} is larger than the file ($size bytes)")
            }
            if (n > MAX_HEADER_BYTES) fail(ErrorCode.HEADER_LENGTH, "bundle header length $n exceeds the $MAX_HEADER_BYTES-byte limit")
            val bytes = io { source.readBytes(8, n.toInt()) }
            val text = try {
                Charsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(bytes)).toString()
            } catch (e: CharacterCodingException) {
                fail(ErrorCode.HEADER_ENCODING, "bundle header is not valid UTF-8")
            }
            val header = try {
                Json.parse(text)
            } catch (e: JsonDuplicateKeyException) {
                fail(ErrorCode.DUPLICATE_NAME, "bundle header has duplicate entry '${e.key}'")
            } catch (e: JsonSyntaxException) {
                fail(ErrorCode.HEADER_JSON, "bundle header is not valid JSON (${e.message})")
            }
            if (header !is JsonObject) fail(ErrorCode.HEADER_JSON, "bundle header is not a JSON object")
            return Triple(n, bytes, header)
        }

        /** Tensor entries in header order; checks dtype/shape/offsets, contiguity, full coverage. */
        internal fun parseEntries(header: JsonObject, dataLen: Long): Map<String, TensorEntry> {
            val entries = ArrayList<TensorEntry>()
            for ((name, spec) in header.entries) {
                if (name == "__metadata__") continue
                if (spec !is JsonObject || spec.keys != setOf("dtype", "shape", "data_offsets")) {
                    fail(ErrorCode.TENSOR_HEADER, "tensor '$name' has a malformed header entry")
                }
                val dtype = (spec["dtype"] as? String)?.let { DType.of(it) }
                    ?: fail(ErrorCode.TENSOR_HEADER, "tensor '$name' has unsupported dtype ${JsonValues.render(spec["dtype"])}")
                val shape = spec["shape"]
                val offs = spec["data_offsets"]
                if (shape !is List<*> || !shape.all { JsonValues.isInt(it) && (it as Number).toDouble() >= 0 } ||
                    offs !is List<*> || offs.size != 2 || !offs.all { JsonValues.isInt(it) }
                ) {
                    fail(ErrorCode.TENSOR_HEADER, "tensor '$name' has a malformed shape or data_offsets")
                }
                // exact arithmetic, as Python's ints: nothing overflows silently
                var count = BigInteger.ONE
                for (s in shape) count = count.multiply(big(s))
                val begin = big(offs[0])
                val end = big(offs[1])
                val dl = BigInteger.valueOf(dataLen)
                if (begin.signum() < 0 || begin > end || end > dl ||
                    end.subtract(begin) != count.multiply(BigInteger.valueOf(dtype.size.toLong()))
                ) {
                    fail(ErrorCode.DATA_OFFSETS, "tensor '$name' data_offsets ${JsonValues.render(offs)} do not fit its shape " +
                        "${JsonValues.render(shape)} ${dtype.id} or the $dataLen-byte data section")
                }
                // fits: begin <= end <= dataLen, so every dimension (and the product) fits in a Long
                entries.add(TensorEntry(name, dtype, shape.map { big(it).toLong() }, begin.toLong(), end.toLong()))
            }
            entries.sortBy { it.begin } // stable, as Python's sort
            var pos = 0L
            for (e in entries) {
                if (e.begin != pos) {
                    fail(ErrorCode.DATA_OFFSETS, "tensor '${e.name}' data is not contiguous with the previous tensor (offset ${e.begin}, expected $pos)")
                }
                pos = e.end
            }
            if (pos != dataLen) {
                fail(ErrorCode.DATA_OFFSETS, "bundle data section has ${dataLen - pos} trailing bytes not covered by any tensor")
            }
            val out = LinkedHashMap<String, TensorEntry>()
            for (e in entries) out[e.name] = e
            return out
        }

        private fun big(v: Any?): BigInteger = when (v) {
            is Long -> BigInteger.valueOf(v)
            is BigInteger -> v
            else -> throw IllegalArgumentException()
        }
    }
}

internal inline fun <T> io(block: () -> T): T = try {
    block()
} catch (e: IOException) {
    throw BundleException(ErrorCode.IO, "cannot read bundle: ${e.message}", e)
}

/** SHA-256 of `[position, position + length)` of a source, streamed. */
fun sha256Range(source: ByteSource, position: Long, length: Long, md: MessageDigest = MessageDigest.getInstance("SHA-256")): ByteArray {
    val buf = ByteBuffer.allocate(1 shl 20)
    var p = position
    val end = position + length
    while (p < end) {
        buf.clear()
        val n = minOf(buf.capacity().toLong(), end - p).toInt()
        buf.limit(n)
        io { source.read(p, buf) }
        md.update(buf.array(), 0, n)
        p += n
    }
    return md.digest()
}

object Hex {
    private const val DIGITS = "0123456789abcdef"
    fun encode(b: ByteArray): String {
        val sb = StringBuilder(b.size * 2)
        for (x in b) sb.append(DIGITS[(x.toInt() shr 4) and 15]).append(DIGITS[x.toInt() and 15])
        return sb.toString()
    }

    fun decode(s: String): ByteArray {
        require(s.length % 2 == 0)
        return ByteArray(s.length / 2) { i ->
            val hi = Character.digit(s[2 * i], 16)
            val lo = Character.digit(s[2 * i + 1], 16)
            require(hi >= 0 && lo >= 0) { "not hex" }
            ((hi shl 4) or lo).toByte()
        }
    }
}
