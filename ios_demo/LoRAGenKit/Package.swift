// swift-tools-version: 5.9
//
// LoRAGenKit: reads, verifies and swaps loragen weight bundles on iOS/macOS
// (docs/bundle-format.md). No dependencies beyond the SDK: Foundation, CryptoKit (Ed25519,
// SHA-256) and, where present, Core ML. `swift test` runs the tests against tests/golden/ of the
// repository (the same vectors as the Kotlin core's tests).
import PackageDescription

let package = Package(
    name: "LoRAGenKit",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "LoRAGenKit", targets: ["LoRAGenKit"]),
    ],
    targets: [
        .target(name: "LoRAGenKit"),
        .testTarget(name: "LoRAGenKitTests", dependencies: ["LoRAGenKit"]),
    ]
)
