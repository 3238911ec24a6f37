import SwiftUI

/// loragen iOS demo: pick an exported artifact, ask the service for a specialization bundle,
/// download it (resumable), verify it with LoRAGenKit, swap it into the model without re-export,
/// and chat with the specialized model.
@main
struct LoRAGenDemoApp: App {
    @State private var model = DemoModel()

    var body: some Scene {
        WindowGroup {
            ContentView()
                .environment(model)
        }
    }
}
