import Foundation
import XCTest
@testable import LoRAGenKit

/// The tokenizer against the Python `tokenizers` library, on the vector files the Kotlin core's
/// TokenizerTest reads: android_demo/core/tools/make_tokenizer_vectors.py writes them (run-tests.sh
/// puts them in android_demo/core/.tools/build/tokenizer-vectors; or set LORAGEN_TOKENIZER_VECTORS
/// to the directory the script wrote).
final class TokenizerTests: XCTestCase {
    static let dir: URL = {
        if let p = ProcessInfo.processInfo.environment["LORAGEN_TOKENIZER_VECTORS"] { return URL(fileURLWithPath: p) }
        return Golden.repoRoot.appendingPathComponent("android_demo/core/.tools/build/tokenizer-vectors")
    }()

    func tokenizer(_ shape: String) throws -> Tokenizer {
        let url = Self.dir.appendingPathComponent("\(shape).tokenizer.json")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw TokenizerError(message: "no \(url.path): run .venv/bin/python android_demo/core/tools/make_tokenizer_vectors.py DIR "
                                 + "and set LORAGEN_TOKENIZER_VECTORS=DIR (run-tests.sh writes them to its build directory)")
        }
        return try Tokenizer(url: url)
    }

    func cases(_ shape: String) throws -> [JSONObject] {
        let data = try Data(contentsOf: Self.dir.appendingPathComponent("\(shape).vectors.json"))
        guard case .object(let o) = try JSON.parse(String(decoding: data, as: UTF8.self)), let c = o["cases"]?.arrayValue else {
            throw TokenizerError(message: "\(shape).vectors.json has no cases")
        }
        return c.compactMap { $0.objectValue }
    }

    func ints(_ v: JSONValue?) -> [Int] { (v?.arrayValue ?? []).compactMap { $0.intValue } }

    /// Every case of `shape`; returns the number of string cases checked.
    func check(_ shape: String) throws -> Int {
        let tok = try tokenizer(shape)
        var failures: [String] = []
        var strings = 0
        var refused = 0
        for o in try cases(shape) {
            guard let text = o["text"]?.jsonString?.units else { // random ids
                let ids = ints(o["ids"])
                let d = tok.decodeUnits(ids)
                let all = tok.decodeUnits(ids, skipSpecialTokens: false)
                if d != o["decoded"]?.jsonString?.units || all != o["decoded_all"]?.jsonString?.units { failures.append("decode \(ids)") }
                continue
            }
            strings += 1
            if o["error"]?.boolValue == true {
                refused += 1
                do {
                    _ = try tok.encode(units: text)
                    failures.append("encode \(Tokenizer.text(text)): accepted, the library refuses it")
                } catch let e as TokenizerError {
                    XCTAssertTrue(e.message.contains("lone surrogate"), e.message)
                }
                continue
            }
            let ids = try tok.encode(units: text)
            let plain = try tok.encode(units: text, addSpecialTokens: false)
            let want = ints(o["ids"])
            if ids != want { failures.append("encode \(Tokenizer.text(text).debugDescription): \(ids) != \(want)") }
            if plain != ints(o["ids_plain"]) { failures.append("encode(plain) \(Tokenizer.text(text).debugDescription): \(plain)") }
            if tok.decodeUnits(want) != o["decoded"]?.jsonString?.units { failures.append("decode(encode(\(Tokenizer.text(text).debugDescription)))") }
            if tok.decodeUnits(want, skipSpecialTokens: false) != o["decoded_all"]?.jsonString?.units {
                failures.append("decode(all) of \(Tokenizer.text(text).debugDescription)")
            }
        }
        XCTAssertEqual(failures.count, 0, "\(shape): first mismatches:\n" + failures.prefix(8).joined(separator: "\n"))
        XCTAssertGreaterThan(refused, 0, "\(shape): no refused strings in the vectors")
        return strings
    }

    func testGpt2ByteLevelMatchesTheLibrary() throws { XCTAssertEqual(try check("gpt2"), 10000) }
    func testLlama3ByteLevelMatchesTheLibrary() throws { XCTAssertEqual(try check("llama3"), 10000) }
    func testLlama2SentencePieceMatchesTheLibrary() throws { XCTAssertEqual(try check("llama2"), 10000) }
    func testGemmaSentencePieceMatchesTheLibrary() throws { XCTAssertEqual(try check("gemma"), 10000) }
    func testMetaspaceMatchesTheLibrary() throws { XCTAssertEqual(try check("metaspace"), 10000) }
    func testPresetTokenizerMatchesTheLibrary() throws { XCTAssertEqual(try check("preset"), 10000) }

    func testSentencePieceSpacesAreNotUnknown() throws {
        for shape in ["llama2", "gemma"] {
            let tok = try tokenizer(shape)
            let unk = tok.tokenToId("<unk>")!
            let ids = tok.encode("hello world é 你", addSpecialTokens: false)
            XCTAssertFalse(ids.contains(unk), "\(shape): \(ids)")
            XCTAssertEqual(tok.decode(ids), "hello world é 你")
            XCTAssertEqual(tok.encode("x").first, tok.bosId)
        }
        let l2 = try tokenizer("llama2")
        XCTAssertEqual(l2.bosId, 1)
        XCTAssertEqual(l2.eosId, 2)
        XCTAssertTrue(l2.encode("a\u{7}", addSpecialTokens: false).contains(l2.tokenToId("<0x07>")!)) // byte fallback
    }

    func testPresetTokenizerIsOneTokenPerByte() throws {
        let tok = try tokenizer("preset")
        XCTAssertEqual(tok.vocabSize, 260)
        XCTAssertEqual(tok.bosId, 1)
        XCTAssertEqual(tok.eosId, 2)
        XCTAssertEqual(tok.encode("Hi é!"), [1, 43, 76, 224, 131, 106, 4])
        XCTAssertEqual(tok.encode("😀 </s> x"), [1, 176, 257, 250, 226, 224, 2, 224, 91])
        XCTAssertEqual(tok.decode([1, 176, 257, 250, 226, 224, 2, 224, 91]), "😀  x")
    }

    func testStreamingDecodeAddsUpToTheWholeText() throws {
        for shape in ["gpt2", "llama3", "llama2", "gemma", "metaspace", "preset"] {
            let tok = try tokenizer(shape)
            var n = 0
            for o in try cases(shape) where o["text"] != nil && o["error"] == nil {
                if n == 200 { break }
                n += 1
                let ids = ints(o["ids"])
                var d = StreamingDecoder(tok)
                var s = ""
                for id in ids { s += d.append(id) }
                s += d.finish()
                XCTAssertEqual(Array(s.utf16), o["decoded"]?.jsonString?.units, "\(shape): streamed \(ids)")
            }
        }
    }

    func testUnsupportedComponentsAreRefusedByName() throws {
        let base = try String(contentsOf: Self.dir.appendingPathComponent("llama2.tokenizer.json"), encoding: .utf8)
        guard case .object(let j) = try JSON.parse(base) else { return XCTFail("not an object") }
        func with(_ key: String, _ value: String) throws -> JSONObject {
            var m = j
            m[key] = try JSON.parse(value)
            return m
        }
        XCTAssertNoThrow(try Tokenizer(json: j))
        let cases: [(JSONObject, String)] = [
            (try with("normalizer", #"{"type":"NFKC"}"#), "normalizer NFKC"),
            (try with("normalizer", #"{"type":"Replace","pattern":{"Regex":" +"},"content":"▁"}"#), "normalizer Replace pattern"),
            (try with("pre_tokenizer", #"{"type":"Whitespace"}"#), "pre_tokenizer Whitespace"),
            (try with("pre_tokenizer", #"{"type":"Split","pattern":{"Regex":"(?<x"},"behavior":"Isolated","invert":false}"#), "regex"),
            (try with("post_processor", #"{"type":"RobertaProcessing","sep":["</s>",2],"cls":["<s>",0]}"#), "post_processor RobertaProcessing"),
            (try with("decoder", #"{"type":"WordPiece","prefix":"##","cleanup":true}"#), "decoder WordPiece"),
            (try with("truncation", #"{"max_length":8,"strategy":"LongestFirst","stride":0,"direction":"Right"}"#), "truncation"),
            (try with("model", #"{"type":"Unigram","unk_id":0,"vocab":[["<unk>",0.0]]}"#), "model type Unigram"),
            (try with("model", #"{"type":"BPE","vocab":{"a":0},"merges":[],"dropout":0.1}"#), "BPE dropout"),
            (try with("model", #"{"type":"BPE","vocab":{"a":0},"merges":[],"continuing_subword_prefix":"##"}"#), "continuing_subword_prefix"),
            (try with("model", #"{"type":"BPE","vocab":{"a":0},"merges":["a b"]}"#), "merge"),
            (try with("added_tokens", #"[{"id":0,"content":"<x>","single_word":false,"lstrip":true,"rstrip":false,"normalized":false,"special":true}]"#),
             "added token lstrip"),
        ]
        for (json, what) in cases {
            do {
                _ = try Tokenizer(json: json)
                XCTFail("\(what): accepted")
            } catch let e as TokenizerError {
                XCTAssertTrue(e.message.hasPrefix("unsupported in tokenizer.json: ") && e.message.contains(what), "'\(what)' not in: \(e.message)")
            }
        }
        XCTAssertThrowsError(try Tokenizer(jsonText: "[1]"))
        XCTAssertThrowsError(try Tokenizer(jsonText: "{"))
    }
}
