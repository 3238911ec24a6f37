// Development tool (not part of core or its tests): concatenate .ptd files with the Kotlin
// reader/writer, so the ExecuTorch runtime itself can load a Kotlin-written data file.
//   kotlinc -cp <core classes> tools/PtdConcat.kt -d /tmp/ptdtool && java -cp ... PtdConcatKt out.ptd a.ptd b.ptd
import dev.loragen.core.ByteSource
import dev.loragen.core.PtdEntry
import dev.loragen.core.PtdFile
import dev.loragen.core.PtdWriter
import java.io.File

fun main(args: Array<String>) {
    val entries = args.drop(1).flatMap { path ->
        val f = PtdFile.read(ByteSource.open(File(path)))
        f.keys.map { PtdEntry(it, f.buffer(it)!!, f.layout(it)) }
    }
    File(args[0]).outputStream().use { PtdWriter.write(entries, it) }
    println("wrote ${args[0]}: ${entries.size} entries")
}
