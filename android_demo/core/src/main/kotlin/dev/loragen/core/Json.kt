package dev.loragen.core

import java.math.BigInteger

/**
 * A small strict JSON parser for bundle headers and manifests (no dependencies).
 *
 * It accepts what Python's `json.loads` accepts (RFC 8259 plus `NaN`, `Infinity`, `-Infinity`,
 * which Python's reader also takes) and nothing more, so the Kotlin and Python readers give the same
 * verdicts. Values map to:
 *  - object  -> [JsonObject] (insertion-ordered; a repeated key anywhere is an error)
 *  - array   -> `List<Any?>`
 *  - string  -> `String`
 *  - integer literal (no fraction/exponent) -> `Long`, or `BigInteger` when it does not fit; more
 *    than [MAX_INT_DIGITS] digits is a syntax error
 *  - other numbers -> `Double`
 *  - true/false -> `Boolean`, null -> `null`
 *
 * Errors: [JsonDuplicateKeyException] for a repeated key (raised when the object that holds it is
 * complete, as Python's `object_pairs_hook` does), [JsonSyntaxException] for anything else,
 * including nesting deeper than [MAX_DEPTH] containers. (Python's C scanner gives up near the
 * interpreter's recursion limit, ~1000 levels, so headers nested 513..~990 deep are refused here
 * and accepted there; real headers are 4 levels deep.)
 */
object Json {
    const val MAX_DEPTH = 512

    /** Longest integer literal accepted, in digits (sign excluded), as Python's bundle reader. */
    const val MAX_INT_DIGITS = 4300

    fun parse(text: String): Any? {
        val p = Parser(text)
        p.skipWs()
        val v = p.value(0)
        p.skipWs()
        if (p.pos != text.length) throw JsonSyntaxException("extra data", p.pos)
        return v
    }

    private class Parser(val s: String) {
        var pos = 0

        fun skipWs() {
            while (pos < s.length) {
                val c = s[pos]
                if (c == ' ' || c == '\t' || c == '\n' || c == '\r') pos++ else break
            }
        }

        fun fail(msg: String): Nothing = throw JsonSyntaxException(msg, pos)

        fun value(depth: Int): Any? {
            if (depth > MAX_DEPTH) fail("nested too deeply")
            if (pos >= s.length) fail("expecting value")
            return when (val c = s[pos]) {
                '{' -> obj(depth + 1)
                '[' -> arr(depth + 1)
                '"' -> string()
                't' -> literal("true", true)
                'f' -> literal("false", false)
                'n' -> literal("null", null)
                'N' -> literal("NaN", Double.NaN)
                'I' -> literal("Infinity", Double.POSITIVE_INFINITY)
                else -> if (c == '-' || c in '0'..'9') number() else fail("expecting value")
            }
        }

        fun literal(word: String, v: Any?): Any? {
            if (!s.startsWith(word, pos)) fail("expecting value")
            pos += word.length
            return v
        }

        fun obj(depth: Int): JsonObject {
            if (depth > MAX_DEPTH) fail("nested too deeply")
            pos++ // '{'
            val pairs = ArrayList<Pair<String, Any?>>()
            skipWs()
            if (pos < s.length && s[pos] == '}') {
                pos++
                return JsonObject(LinkedHashMap())
            }
            while (true) {
                skipWs()
                if (pos >= s.length || s[pos] != '"') fail("expecting property name enclosed in double quotes")
                val k = string()
                skipWs()
                if (pos >= s.length || s[pos] != ':') fail("expecting ':' delimiter")
                pos++
                skipWs()
                val v = value(depth)
                pairs.add(k to v)
                skipWs()
                if (pos >= s.length) fail("expecting ',' delimiter")
                val c = s[pos++]
                if (c == '}') break
                if (c != ',') { pos--; fail("expecting ',' delimiter") }
            }
            // Like Python's object_pairs_hook: duplicates are seen once the object is complete.
            val m = LinkedHashMap<String, Any?>(pairs.size * 2)
            for ((k, v) in pairs) {
                if (m.containsKey(k)) throw JsonDuplicateKeyException(k)
                m[k] = v
            }
            return JsonObject(m)
        }

        fun arr(depth: Int): List<Any?> {
            if (depth > MAX_DEPTH) fail("nested too deeply")
            pos++ // '['
            val out = ArrayList<Any?>()
            skipWs()
            if (pos < s.length && s[pos] == ']') { pos++; return out }
            while (true) {
                skipWs()
                out.add(value(depth))
                skipWs()
                if (pos >= s.length) fail("expecting ',' delimiter")
                val c = s[pos++]
                if (c == ']') return out
                if (c != ',') { pos--; fail("expecting ',' delimiter") }
            }
        }

        fun string(): String {
            pos++ // opening quote
            val sb = StringBuilder()
            while (true) {
                if (pos >= s.length) fail("unterminated string")
                val c = s[pos++]
                when {
                    c == '"' -> return sb.toString()
                    c == '\\' -> {
                        if (pos >= s.length) fail("unterminated string")
                        when (val e = s[pos++]) {
                            '"' -> sb.append('"'); '\\' -> sb.append('\\'); '/' -> sb.append('/')
                            'b' -> sb.append('\b'); 'f' -> sb.append('\u000c'); 'n' -> sb.append('\n')
                            'r' -> sb.append('\r'); 't' -> sb.append('\t')
                            'u' -> sb.append(hex4())
                            else -> { pos--; fail("invalid \\escape '$e'") }
                        }
                    }
                    c < ' ' -> { pos--; fail("invalid control character in string") }
                    else -> sb.append(c)
                }
            }
        }

        fun hex4(): Char {
            if (pos + 4 > s.length) fail("invalid \\uXXXX escape")
            var v = 0
            for (i in 0 until 4) {
                val d = Character.digit(s[pos + i], 16)
                if (d < 0) fail("invalid \\uXXXX escape")
                v = v * 16 + d
            }
            pos += 4
            return v.toChar() // lone surrogates are kept, as Python does
        }

        fun number(): Any {
            val start = pos
            if (s[pos] == '-') {
                pos++
                if (s.startsWith("Infinity", pos)) { pos += 8; return Double.NEGATIVE_INFINITY }
            }
            if (pos >= s.length || s[pos] !in '0'..'9') { pos = start; fail("expecting value") }
            if (s[pos] == '0') pos++ else while (pos < s.length && s[pos] in '0'..'9') pos++
            var isInt = true
            if (pos + 1 < s.length && s[pos] == '.' && s[pos + 1] in '0'..'9') {
                isInt = false
                pos++
                while (pos < s.length && s[pos] in '0'..'9') pos++
            }
            if (pos < s.length && (s[pos] == 'e' || s[pos] == 'E')) {
                var q = pos + 1
                if (q < s.length && (s[q] == '+' || s[q] == '-')) q++
                if (q < s.length && s[q] in '0'..'9') {
                    isInt = false
                    while (q < s.length && s[q] in '0'..'9') q++
                    pos = q
                }
            }
            val lit = s.substring(start, pos)
            if (!isInt) return lit.toDouble()
            // Python's reader refuses integer literals of more than 4300 digits (format.MAX_INT_DIGITS)
            if (lit.length - (if (lit.startsWith("-")) 1 else 0) > MAX_INT_DIGITS) {
                pos = start
                fail("integer literal longer than $MAX_INT_DIGITS digits")
            }
            return lit.toLongOrNull() ?: BigInteger(lit)
        }
    }
}

open class JsonException(message: String) : Exception(message)
class JsonSyntaxException(msg: String, val at: Int) : JsonException("$msg at char $at")
class JsonDuplicateKeyException(val key: String) : JsonException("duplicate key '$key'")

/** A parsed JSON object, keys in document order. */
class JsonObject(val map: LinkedHashMap<String, Any?>) {
    operator fun get(key: String): Any? = map[key]
    fun containsKey(key: String) = map.containsKey(key)
    val keys: Set<String> get() = map.keys
    val entries: Set<Map.Entry<String, Any?>> get() = map.entries
    val size: Int get() = map.size
    fun obj(key: String): JsonObject? = map[key] as? JsonObject
    fun str(key: String): String? = map[key] as? String
    override fun equals(other: Any?): Boolean = other is JsonObject && JsonValues.pyEquals(this, other)
    override fun hashCode(): Int = map.keys.hashCode()
    override fun toString(): String = JsonValues.render(this)
}

/** Python-compatible comparisons of parsed JSON values (1 == 1.0 == True, dicts unordered). */
object JsonValues {
    /** The numeric value of a JSON number or boolean (Python: bool is an int), else null. */
    fun num(v: Any?): Double? = when (v) {
        is Long -> v.toDouble()
        is BigInteger -> v.toDouble()
        is Double -> v
        is Boolean -> if (v) 1.0 else 0.0
        else -> null
    }

    /** An integer (not a bool, not a float literal), as Python's `isinstance(x, int) and not bool`. */
    fun isInt(v: Any?): Boolean = v is Long || v is BigInteger

    /** A JSON number (never a bool) as a finite double, else null (Python `format.finite_number`). */
    fun finite(v: Any?): Double? {
        val d = when (v) {
            is Long -> v.toDouble()
            is BigInteger -> v.toDouble()
            is Double -> v
            else -> return null
        }
        return if (d.isNaN() || d.isInfinite()) null else d
    }

    private fun ieeeEquals(x: Double, y: Double): Boolean = x == y // IEEE 754: NaN != NaN, -0.0 == 0.0

    /** Equality with exact JSON types: 1, 1.0 and true all differ; NaN != NaN (Python `format.json_equal`). */
    fun strictEquals(a: Any?, b: Any?): Boolean = when {
        a == null || b == null -> a == null && b == null
        a is String -> b is String && a == b
        a is Boolean -> b is Boolean && a == b
        a is Double -> b is Double && ieeeEquals(a, b)
        isInt(a) -> isInt(b) && toBig(a) == toBig(b)
        a is List<*> -> b is List<*> && a.size == b.size && a.indices.all { strictEquals(a[it], b[it]) }
        a is JsonObject -> b is JsonObject && a.keys == b.keys && a.entries.all { strictEquals(it.value, b[it.key]) }
        else -> false
    }

    fun pyEquals(a: Any?, b: Any?): Boolean {
        if (a == null || b == null) return a == null && b == null
        if (a is String || b is String) return a is String && b is String && a == b
        if (a is JsonObject || b is JsonObject) {
            if (a !is JsonObject || b !is JsonObject || a.size != b.size) return false
            for ((k, v) in a.entries) {
                if (!b.containsKey(k) || !pyEquals(v, b[k])) return false
            }
            return true
        }
        if (a is List<*> || b is List<*>) {
            if (a !is List<*> || b !is List<*> || a.size != b.size) return false
            for (i in a.indices) if (!pyEquals(a[i], b[i])) return false
            return true
        }
        // numbers and booleans
        if ((a is Long || a is BigInteger || a is Boolean) && (b is Long || b is BigInteger || b is Boolean)) {
            return toBig(a) == toBig(b)
        }
        val x = num(a) ?: return false
        val y = num(b) ?: return false
        if (a is Double && b is Double) return x == y
        // int vs float: exact comparison, as Python does
        val d = if (a is Double) x else y
        val i = if (a is Double) b else a
        if (d.isNaN() || d.isInfinite()) return false
        return java.math.BigDecimal(d).compareTo(java.math.BigDecimal(toBig(i))) == 0
    }

    private fun toBig(v: Any): BigInteger = when (v) {
        is Long -> BigInteger.valueOf(v)
        is BigInteger -> v
        is Boolean -> if (v) BigInteger.ONE else BigInteger.ZERO
        else -> throw IllegalArgumentException()
    }

    /** Compact JSON text, for messages and tests. */
    fun render(v: Any?): String = when (v) {
        null -> "null"
        is String -> quote(v)
        is JsonObject -> v.entries.joinToString(",", "{", "}") { quote(it.key) + ":" + render(it.value) }
        is List<*> -> v.joinToString(",", "[", "]") { render(it) }
        else -> v.toString()
    }

    fun quote(s: String): String {
        val sb = StringBuilder("\"")
        for (c in s) {
            when {
                c == '"' -> sb.append("\\\"")
                c == '\\' -> sb.append("\\\\")
                c < ' ' || c > '~' -> sb.append(String.format("\\u%04x", c.code))
                else -> sb.append(c)
            }
        }
        return sb.append('"').toString()
    }
}
