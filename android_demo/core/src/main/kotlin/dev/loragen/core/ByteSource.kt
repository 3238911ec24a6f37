package dev.loragen.core

import java.io.Closeable
import java.io.EOFException
import java.io.File
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import java.nio.file.StandardOpenOption

/**
 * Random-access bytes: a file (positional reads and read-only memory maps; the file is never read
 * whole) or an in-memory array (tests, small payloads).
 */
interface ByteSource : Closeable {
    val size: Long

    /** Reads exactly `dst.remaining()` bytes starting at [position] into [dst]. */
    fun read(position: Long, dst: ByteBuffer)

    /** A read-only little-endian view of `[position, position + length)`: a memory map for files. */
    fun slice(position: Long, length: Long): ByteBuffer

    fun readBytes(position: Long, length: Int): ByteArray {
        val a = ByteArray(length)
        read(position, ByteBuffer.wrap(a))
        return a
    }

    companion object {
        fun of(bytes: ByteArray): ByteSource = ArraySource(bytes)
        fun open(file: File): ByteSource = FileSource(file)
    }
}

class ArraySource(private val bytes: ByteArray) : ByteSource {
    override val size: Long get() = bytes.size.toLong()

    override fun read(position: Long, dst: ByteBuffer) {
        val n = dst.remaining()
        if (position < 0 || position + n > bytes.size) throw EOFException("read past end")
        dst.put(bytes, position.toInt(), n)
    }

    override fun slice(position: Long, length: Long): ByteBuffer {
        require(position >= 0 && length >= 0 && position + length <= bytes.size)
        return ByteBuffer.wrap(bytes, position.toInt(), length.toInt()).slice().asReadOnlyBuffer()
            .order(ByteOrder.LITTLE_ENDIAN)
    }

    override fun close() {}
}

class FileSource(file: File) : ByteSource {
    private val channel: FileChannel = FileChannel.open(file.toPath(), StandardOpenOption.READ)
    override val size: Long = channel.size()

    override fun read(position: Long, dst: ByteBuffer) {
        var p = position
        while (dst.hasRemaining()) {
            val n = channel.read(dst, p)
            if (n < 0) throw EOFException("read past end of file")
            p += n
        }
    }

    override fun slice(position: Long, length: Long): ByteBuffer {
        if (position < 0 || length < 0 || position + length > size) throw IOException("slice out of range")
        if (length == 0L) return ByteBuffer.allocate(0).order(ByteOrder.LITTLE_ENDIAN)
        return channel.map(FileChannel.MapMode.READ_ONLY, position, length).order(ByteOrder.LITTLE_ENDIAN)
    }

    override fun close() = channel.close()
}
