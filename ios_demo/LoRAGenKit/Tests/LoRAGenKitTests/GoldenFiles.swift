// The files of tests/golden/ (the repository's golden vectors) that the Swift tests read, in one
// place. `Golden.url(_:)` refuses any path that is not listed here, and tests/test_ios_golden.py
// parses the string literals of `all` to check that every file exists, is current (byte-equal to
// what tests/golden/make_golden.py generates; quant/ comes from make_quant_golden.py, which it
// calls) and that the set equals the one the Kotlin core's tests read, so both phones test the
// same vectors. Keep one literal per line.

enum GoldenFiles {
    static let all: [String] = [
        "expected.json",
        "keys/public_key.pem",
        "keys/other_public_key.pem",
        "keys/signing_key.pem",
        "artifacts/coreml.json",
        "artifacts/executorch.json",
        "artifacts/onnx.json",
        "base/coreml.safetensors",
        "base/executorch.safetensors",
        "base/onnx.safetensors",
        "bundles/coreml-lora.bundle",
        "bundles/coreml-merged.bundle",
        "bundles/duplicate-names.bundle",
        "bundles/executorch-lora.bundle",
        "bundles/executorch-merged.bundle",
        "bundles/non-utf8-header.bundle",
        "bundles/onnx-lora.bundle",
        "bundles/onnx-merged.bundle",
        "bundles/other-backend.bundle",
        "bundles/oversized-header-length.bundle",
        "bundles/short.bundle",
        "bundles/tampered-data.bundle",
        "bundles/tampered-header.bundle",
        "bundles/truncated.bundle",
        "bundles/truncated-data.bundle",
        "bundles/unsigned.bundle",
        "bundles/wrong-key.bundle",
        "expected/merged-coreml-lora.safetensors",
        "expected/merged-coreml-merged.safetensors",
        "expected/merged-executorch-lora.safetensors",
        "expected/merged-executorch-merged.safetensors",
        "expected/merged-onnx-lora.safetensors",
        "expected/merged-onnx-merged.safetensors",
        "expected/slots-onnx-lora.safetensors",
        "quant/index.json",
        "quant/xnnpack-int4-g32.safetensors",
        "quant/xnnpack-int4-g128.safetensors",
        "quant/xnnpack-int8-pc.safetensors",
        "quant/ort-int4-b32.safetensors",
        "quant/ort-int4-b128.safetensors",
        "quant/ort-int8-b32.safetensors",
        "quant/ort-int8-b128.safetensors",
        "quant/coreml-int4-b32.safetensors",
        "quant/coreml-int8-pc.safetensors",
    ]

    /// Not a golden vector: the `.ptd` written by executorch's own serializer (flatc) that the
    /// Kotlin core's PtdTest reads too (android_demo/core/tools/make_ptd_fixture.py), relative to
    /// the repository root.
    static let flatcSamplePtd = "android_demo/core/src/test/resources/flatc-sample.ptd"
}
