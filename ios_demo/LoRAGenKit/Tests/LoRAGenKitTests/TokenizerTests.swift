import Foundation
import XCTest
@testable import LoRAGenKit

/// The byte-level tokenizer against ids the Python tokenizer (`loragen_mobile.models.build_tokenizer`)
/// gives. The tokenizer.json is rebuilt here the way `build_tokenizer` builds it (4 specials, then
/// the 256 byte symbols in code-point order, no merges) so no model directory is needed.
final class TokenizerTests: XCTestCase {
    static func presetTokenizerJSON() -> JSONObject {
        var vocab = JSONObject()
        let specials = ["<pad>", "<s>", "</s>", "<unk>"]
        for (i, s) in specials.enumerated() { vocab[s] = .int(Int64(i)) }
        let alphabet = ByteLevelTokenizer.byteToChar.sorted().map { String(Character(Unicode.Scalar($0)!)) }
        for s in alphabet { vocab[s] = .int(Int64(vocab.count)) }
        let added: [JSONValue] = specials.enumerated().map { i, s in
            .object(JSONObject([("id", .int(Int64(i))), ("content", .str(s)), ("special", .bool(true))]))
        }
        let sos = JSONObject([("SpecialToken", .object(JSONObject([("id", .str("<s>")), ("type_id", .int(0))])))])
        let seqA = JSONObject([("Sequence", .object(JSONObject([("id", .str("A")), ("type_id", .int(0))])))])
        let post = JSONObject([
            ("type", .str("TemplateProcessing")),
            ("single", .array([.object(sos), .object(seqA)])),
            ("special_tokens", .object(JSONObject([("<s>", .object(JSONObject([("id", .str("<s>")), ("ids", .array([.int(1)])),
                                                                                ("tokens", .array([.str("<s>")]))])))]))),
        ])
        return JSONObject([
            ("added_tokens", .array(added)),
            ("pre_tokenizer", .object(JSONObject([("type", .str("ByteLevel")), ("add_prefix_space", .bool(false)),
                                                   ("use_regex", .bool(false))]))),
            ("post_processor", .object(post)),
            ("model", .object(JSONObject([("type", .str("BPE")), ("vocab", .object(vocab)), ("merges", .array([]))]))),
        ])
    }

    func testMatchesPythonIds() throws {
        let tok = try ByteLevelTokenizer(json: Self.presetTokenizerJSON())
        XCTAssertEqual(tok.vocabSize, 260)
        XCTAssertEqual(tok.bosId, 1)
        XCTAssertEqual(tok.eosId, 2)
        XCTAssertEqual(tok.prefixIds, [1])
        XCTAssertEqual(tok.encode("Hi é!", addSpecial: true), [1, 43, 76, 224, 131, 106, 4])
        XCTAssertEqual(tok.encode("User: weather in Paris?\nAssistant:", addSpecial: true),
                       [1, 56, 86, 72, 85, 29, 224, 90, 72, 68, 87, 75, 72, 85, 224, 76, 81, 224, 51, 68, 85, 76, 86, 34, 202,
                        36, 86, 86, 76, 86, 87, 68, 81, 87, 29])
        // special tokens in the text are matched verbatim
        XCTAssertEqual(tok.encode("😀 </s> x", addSpecial: true), [1, 176, 257, 250, 226, 224, 2, 224, 91])
        XCTAssertEqual(tok.decode([1, 176, 257, 250, 226, 224, 2, 224, 91]), "😀  x")
        XCTAssertEqual(tok.decode(tok.encode("Hi é!")), "Hi é!")
    }

    func testStreamingDecodeWaitsForWholeCharacters() throws {
        let tok = try ByteLevelTokenizer(json: Self.presetTokenizerJSON())
        var d = StreamingDecoder(tok)
        var pieces: [String] = []
        for id in tok.encode("é😀a") { pieces.append(d.append(id)) }
        XCTAssertEqual(pieces, ["", "é", "", "", "", "😀", "a"])
        XCTAssertEqual(d.append(2), "") // </s> is not text
        XCTAssertEqual(d.finish(), "")
    }
}
