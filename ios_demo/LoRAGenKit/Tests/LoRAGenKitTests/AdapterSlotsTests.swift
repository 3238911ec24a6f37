import Foundation
import XCTest
@testable import LoRAGenKit

/// Run-time adapter slot values: Python's `adapter_slot_inputs` bit for bit (tests/golden/expected/slots-*),
/// as the Kotlin core's `AdapterSlotsTest` checks.
final class AdapterSlotsTests: XCTestCase {
    func testLoraBundleGivesPythonsSlotValuesExactly() throws {
        XCTAssertEqual(try Golden.bundles().obj("onnx-lora")?.str("adapter_slot_values"), "expected/slots-onnx-lora.safetensors")
        let want = try Golden.safetensors("expected/slots-onnx-lora.safetensors")
        let vb = try verify(try Golden.bundle("onnx-lora"), try Golden.artifact("onnx"), try Golden.publicKey())
        let got = try AdapterSlots.values(vb)
        let names = try Golden.artifact("onnx").json.obj("adapter_slots")?["input_names"]?.arrayValue?.compactMap { $0.stringValue }
        XCTAssertEqual(got.map { $0.name ?? "" }, names)
        var nonzero = 0
        for v in got {
            let name = try XCTUnwrap(v.name)
            let t = try XCTUnwrap(want.tensors[JSONString(name)])
            XCTAssertEqual(t.shape, v.shape, name)
            let expected = try LoraMerge.toFloats(try XCTUnwrap(want.tensorData(name)), t.dtype)
            XCTAssertEqual(expected.map { $0.bitPattern }, v.data.map { $0.bitPattern }, name)
            nonzero += v.data.filter { $0 != 0 }.count
        }
        // rank 4 in slots of rank 6: a third of each factor is padding
        XCTAssertEqual(got.reduce(0) { $0 + $1.data.count } * 2 / 3, nonzero)
    }

    func testRefusals() throws {
        let key = try Golden.publicKey()
        expectCode("usage") { _ = try AdapterSlots.values(try verify(try Golden.bundle("onnx-merged"), try Golden.artifact("onnx"), key)) }
        // exported without slots
        expectCode("artifact") { _ = try AdapterSlots.values(try verify(try Golden.bundle("executorch-lora"), try Golden.artifact("executorch"), key)) }
        // slots of a lower rank than the bundle's
        let low = Artifact(json: setting(try Golden.artifact("onnx").json, ["adapter_slots", "rank"], .int(2)))
        expectCode("input") { _ = try AdapterSlots.values(try verify(try Golden.bundle("onnx-lora"), low, key)) }
    }
}
