package dev.loragen.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.math.BigInteger

class JsonTest {
    private fun syntaxError(text: String) {
        try {
            Json.parse(text)
        } catch (e: JsonSyntaxException) {
            return
        }
        fail("expected a syntax error for <$text>")
    }

    private fun duplicate(text: String, key: String) {
        try {
            Json.parse(text)
        } catch (e: JsonDuplicateKeyException) {
            assertEquals(key, e.key)
            return
        }
        fail("expected a duplicate key error for <$text>")
    }

    @Test
    fun valuesAndTypes() {
        val v = Json.parse(""" {"a": [1, -0, 2.5, 1e3, -1E-2, 12345678901234567890, true, false, null, "x\"\\\/\b\f\n\r\tA\u00e9"]} """) as JsonObject
        val a = v["a"] as List<*>
        assertEquals(1L, a[0]); assertEquals(0L, a[1]); assertEquals(2.5, a[2]); assertEquals(1000.0, a[3]); assertEquals(-0.01, a[4])
        assertEquals(BigInteger("12345678901234567890"), a[5])
        assertEquals(true, a[6]); assertEquals(false, a[7]); assertEquals(null, a[8])
        assertEquals("x\"\\/\b\u000c\n\r\tA\u00e9", a[9])
        assertEquals(listOf("k"), (Json.parse("""{"k":{}}""") as JsonObject).keys.toList())
        assertTrue((Json.parse("NaN") as Double).isNaN()) // Python's json accepts these three
        assertEquals(Double.NEGATIVE_INFINITY, Json.parse("-Infinity"))
        assertEquals("\ud800", Json.parse("\"\\ud800\"")) // lone surrogate kept, as Python
        assertEquals(listOf("b", "a"), (Json.parse("""{"b":1,"a":2}""") as JsonObject).keys.toList()) // order kept
    }

    @Test
    fun duplicateKeysAnywhere() {
        duplicate("""{"a":1,"a":1}""", "a")
        duplicate("""{"x":{"b":1,"c":2,"b":3}}""", "b")
        duplicate("""[{"z":1,"z":2}]""", "z")
        duplicate("""{"\u0061":1,"a":2}""", "a") // same key after unescaping
        // Python's object_pairs_hook sees an object only once it is complete: a syntax error first wins
        syntaxError("""{"a":1,"a":2""")
        // distinct keys that differ only in case are fine
        assertEquals(2, (Json.parse("""{"a":1,"A":2}""") as JsonObject).size)
    }

    @Test
    fun rejectsWhatPythonRejects() {
        for (t in listOf(
            "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{'a':1}", "{\"a\" 1}", "01", "1.", ".5", "+1", "1e", "--1",
            "tru", "nul", "[1 2]", "{\"a\":1}x", "\"abc", "\"a\u0001b\"", "\"\\x\"", "\"\\u12g4\"", "\ufeff{}",
            "{\"a\":1}{}", "infinity", "nan", "[NaN,]", "{1:2}", "\"\\", "[\"a\"\n,]",
        )) syntaxError(t)
    }

    @Test
    fun nestingLimit() {
        Json.parse("[".repeat(Json.MAX_DEPTH) + "]".repeat(Json.MAX_DEPTH))
        syntaxError("[".repeat(Json.MAX_DEPTH + 1) + "]".repeat(Json.MAX_DEPTH + 1))
        syntaxError("[".repeat(100_000)) // no StackOverflowError
    }

    @Test
    fun pythonEquality() {
        assertTrue(JsonValues.pyEquals(1L, 1.0))
        assertTrue(JsonValues.pyEquals(true, 1L))
        assertFalse(JsonValues.pyEquals(1L, 1.5))
        assertFalse(JsonValues.pyEquals(Double.NaN, Double.NaN))
        assertFalse(JsonValues.pyEquals("1", 1L))
        assertTrue(JsonValues.pyEquals(Json.parse("""{"a":[1,{"b":2.0}],"c":null}"""), Json.parse("""{"c":null,"a":[1.0,{"b":2}]}""")))
        assertFalse(JsonValues.pyEquals(Json.parse("""{"a":1}"""), Json.parse("""{"a":1,"b":2}""")))
        assertTrue(JsonValues.pyEquals(BigInteger("9007199254740993"), 9007199254740993L))
        assertFalse(JsonValues.pyEquals(9007199254740993L, 9007199254740992.0)) // exact int/float comparison
    }

    @Test
    fun renderIsCompactAsciiJson() {
        val text = """{"a":[1,2.5,true,null],"b":"\u00e9\"\n"}"""
        assertEquals("""{"a":[1,2.5,true,null],"b":"\u00e9\"\u000a"}""", JsonValues.render(Json.parse(text)))
    }
}
