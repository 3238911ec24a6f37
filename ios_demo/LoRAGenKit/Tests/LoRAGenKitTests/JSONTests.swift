import Foundation
import XCTest
@testable import LoRAGenKit

/// The strict JSON reader (Kotlin twin: JsonTest.kt); it must accept and refuse what Python's
/// `json.loads` does.
final class JSONTests: XCTestCase {
    private func syntaxError(_ text: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try JSON.parse(text)
            XCTFail("expected a syntax error for <\(text)>", file: file, line: line)
        } catch JSONError.syntax {
            // expected
        } catch {
            XCTFail("expected a syntax error for <\(text)>, got \(error)", file: file, line: line)
        }
    }

    private func duplicate(_ text: String, _ key: String, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try JSON.parse(text)
            XCTFail("expected a duplicate key error for <\(text)>", file: file, line: line)
        } catch JSONError.duplicateKey(let k) {
            XCTAssertEqual(k, JSONString(key), file: file, line: line)
        } catch {
            XCTFail("expected a duplicate key error for <\(text)>, got \(error)", file: file, line: line)
        }
    }

    func testValuesAndTypes() throws {
        let text = #" {"a": [1, -0, 2.5, 1e3, -1E-2, 12345678901234567890, true, false, null, "x\"\\\/\b\f\n\r\tA\u00e9"]} "#
        guard case .object(let o) = try JSON.parse(text), case .array(let a)? = o["a"] else { return XCTFail("not an object") }
        XCTAssertTrue(PyJSON.equals(a[0], .int(1)))
        if case .int(0) = a[1] {} else { XCTFail("-0 is the integer 0") }
        if case .double(2.5) = a[2] {} else { XCTFail("2.5") }
        if case .double(1000) = a[3] {} else { XCTFail("1e3 is a float") }
        if case .double(-0.01) = a[4] {} else { XCTFail("-1E-2") }
        if case .bigInt("12345678901234567890") = a[5] {} else { XCTFail("big integer") }
        if case .bool(true) = a[6] {} else { XCTFail("true") }
        if case .bool(false) = a[7] {} else { XCTFail("false") }
        if case .null = a[8] {} else { XCTFail("null") }
        XCTAssertEqual(a[9].stringValue, "x\"\\/\u{08}\u{0C}\n\r\tA\u{E9}")
        XCTAssertTrue(try JSON.parse("NaN").number!.isNaN) // Python's json accepts these three
        XCTAssertEqual(try JSON.parse("-Infinity").number, -Double.infinity)
        XCTAssertEqual(try JSON.parse("1e400").number, Double.infinity) // Python: float('inf')
        XCTAssertEqual(try JSON.parse(#""\ud800""#).jsonString?.units, [0xD800]) // lone surrogate kept, as Python
        XCTAssertEqual(try JSON.parse(#""\ud83d\ude00""#).jsonString, JSONString("\u{1F600}"))
        guard case .object(let ordered) = try JSON.parse(#"{"b":1,"a":2}"#) else { return XCTFail() }
        XCTAssertEqual(ordered.keys.map { $0.string }, ["b", "a"]) // document order kept
    }

    func testDuplicateKeysAnywhere() throws {
        duplicate(#"{"a":1,"a":1}"#, "a")
        duplicate(#"{"x":{"b":1,"c":2,"b":3}}"#, "b")
        duplicate(#"[{"z":1,"z":2}]"#, "z")
        duplicate(#"{"\u0061":1,"a":2}"#, "a") // same key after unescaping
        do {
            _ = try JSON.parse(#"{"\ud800":1,"\ud800":2}"#)
            XCTFail("expected a duplicate lone-surrogate key")
        } catch JSONError.duplicateKey(let k) {
            XCTAssertEqual(k.units, [0xD800])
        }
        // Python's object_pairs_hook sees an object only once it is complete: a syntax error first wins
        syntaxError(#"{"a":1,"a":2"#)
        // an inner object completes first
        duplicate(#"{"k":1,"o":{"x":1,"x":2},"k":2}"#, "x")
        // distinct keys: case, and two different lone surrogates (one U+FFFD each as Swift text)
        guard case .object(let o) = try JSON.parse(#"{"a":1,"A":2,"\ud800":3,"\udc00":4}"#) else { return XCTFail() }
        XCTAssertEqual(o.count, 4)
    }

    func testRejectsWhatPythonRejects() {
        for t in ["", " ", "{", "}", "[1,]", #"{"a":1,}"#, "{'a':1}", #"{"a" 1}"#, "01", "1.", ".5", "+1", "1e", "--1",
                  "tru", "nul", "[1 2]", #"{"a":1}x"#, #""abc"#, "\"a\u{01}b\"", #""\x""#, #""\u12g4""#, "\u{FEFF}{}",
                  #"{"a":1}{}"#, "infinity", "nan", "[NaN,]", "{1:2}", #""\"#, "[\"a\"\n,]",
                  // Python's scanner takes ASCII hex digits only in \u escapes (fullwidth digits here)
                  "\"\\u\u{FF10}\u{FF10}41\""] {
            syntaxError(t)
        }
    }

    func testNestingLimit() throws {
        let d = JSON.maxDepth
        XCTAssertNoThrow(try JSON.parse(String(repeating: "[", count: d) + String(repeating: "]", count: d)))
        syntaxError(String(repeating: "[", count: d + 1) + String(repeating: "]", count: d + 1))
        syntaxError(String(repeating: "[", count: 100_000)) // iterative: no stack overflow
        syntaxError(String(repeating: "{\"a\":", count: 100_000))
    }

    func testPythonEquality() throws {
        XCTAssertTrue(PyJSON.equals(.int(1), .double(1)))
        XCTAssertTrue(PyJSON.equals(.bool(true), .int(1)))
        XCTAssertFalse(PyJSON.equals(.int(1), .double(1.5)))
        XCTAssertFalse(PyJSON.equals(.double(.nan), .double(.nan)))
        XCTAssertFalse(PyJSON.equals(.str("1"), .int(1)))
        XCTAssertTrue(PyJSON.equals(nil, .null))
        XCTAssertTrue(PyJSON.equals(try JSON.parse(#"{"a":[1,{"b":2.0}],"c":null}"#), try JSON.parse(#"{"c":null,"a":[1.0,{"b":2}]}"#)))
        XCTAssertFalse(PyJSON.equals(try JSON.parse(#"{"a":1}"#), try JSON.parse(#"{"a":1,"b":2}"#)))
        XCTAssertTrue(PyJSON.equals(try JSON.parse("9007199254740993"), .int(9_007_199_254_740_993)))
        XCTAssertFalse(PyJSON.equals(.int(9_007_199_254_740_993), .double(9_007_199_254_740_992))) // exact int/float comparison
        XCTAssertTrue(PyJSON.equals(try JSON.parse("100000000000000000000"), .double(1e20)))
        XCTAssertFalse(PyJSON.equals(try JSON.parse("100000000000000000001"), .double(1e20)))
    }

    func testPythonTextForms() throws {
        // json.dumps(v, separators=(",", ":"), ensure_ascii=True)
        let v = try JSON.parse(#"{"b":"\u00e9\"\n","a":[1,2.5,true,null]}"#)
        XCTAssertEqual(PyJSON.dumps(v), #"{"b":"\u00e9\"\n","a":[1,2.5,true,null]}"#)
        XCTAssertEqual(PyJSON.dumps(v, sortKeys: true), #"{"a":[1,2.5,true,null],"b":"\u00e9\"\n"}"#)
        XCTAssertEqual(PyJSON.dumps(.double(8)), "8.0")
        // repr() and str() for messages
        XCTAssertEqual(PyJSON.repr(try JSON.parse(#"{"k":["x",1,2.0,null,true]}"#)), "{'k': ['x', 1, 2.0, None, True]}")
        XCTAssertEqual(PyJSON.repr(.str("it's")), "\"it's\"")
        XCTAssertEqual(PyJSON.str(.str("onnx")), "onnx")
        XCTAssertEqual(PyJSON.repr(nil), "None")
    }

    func testStrictUTF8() {
        func ok(_ b: [UInt8]) -> [UInt16]? { b.withUnsafeBytes { JSON.decodeUTF8Strict($0) } }
        XCTAssertEqual(ok(Array("aé€😀".utf8)), Array("aé€😀".utf16))
        XCTAssertNil(ok([0xC0, 0xAF])) // overlong
        XCTAssertNil(ok([0xE0, 0x80, 0xAF])) // overlong 3-byte
        XCTAssertNil(ok([0xED, 0xA0, 0x80])) // encoded surrogate
        XCTAssertNil(ok([0xF4, 0x90, 0x80, 0x80])) // above U+10FFFF
        XCTAssertNil(ok([0xE2, 0x82])) // truncated
        XCTAssertNil(ok([0x80])) // lone continuation
        XCTAssertNil(ok([0xFF]))
    }
}
