import LoRAGenKit
import SwiftUI

struct ContentView: View {
    @Environment(DemoModel.self) private var model
    @State private var message = ""

    var body: some View {
        @Bindable var model = model
        NavigationStack {
            Form {
                Section("Base artifact") {
                    if model.artifacts.isEmpty {
                        Text("Copy an exported artifact into Documents/artifacts/ and the key into Documents/keys/server.pub.")
                            .font(.footnote)
                    }
                    ForEach(model.artifacts) { a in
                        Button {
                            model.select(a)
                        } label: {
                            HStack {
                                Text(a.name)
                                Spacer()
                                Text(a.backend).foregroundStyle(.secondary)
                                if model.selected?.id == a.id { Image(systemName: "checkmark") }
                            }
                        }
                        .disabled(model.busy)
                    }
                    Button("Refresh", action: model.refreshArtifacts)
                }

                Section("Service") {
                    TextField("http://host:8080", text: $model.serviceURL)
                        .textInputAutocapitalization(.never)
                        .autocorrectionDisabled()
                        .keyboardType(.URL)
                    SecureField("API key (X-API-Key)", text: $model.apiKey)
                }

                Section("Specialize") {
                    TextField("Task description", text: $model.task, axis: .vertical)
                        .lineLimit(2...5)
                    Picker("Bundle kind", selection: $model.kind) {
                        Text("merged").tag("merged")
                        Text("lora (merged on device)").tag("lora")
                    }
                    Button("Specialize", action: model.specialize)
                        .disabled(model.busy || model.selected == nil)
                    if let p = model.progress { ProgressView(value: p) }
                }

                Section("Weights") {
                    weightRow(title: "Base model", id: "base") { model.useBase() }
                    ForEach(model.cached) { b in
                        weightRow(title: "\(b.task) (\(b.kind), \(b.id.prefix(8)))", id: b.id) { model.use(b) }
                    }
                    if let saved = model.savedTokens {
                        Text("Context tokens saved per request: \(saved)").font(.footnote)
                    }
                }

                Section("Chat") {
                    ForEach(model.chat) { line in
                        Text(line.text.isEmpty && !line.fromUser ? "…" : line.text)
                            .frame(maxWidth: .infinity, alignment: line.fromUser ? .trailing : .leading)
                            .foregroundStyle(line.fromUser ? Color.accentColor : Color.primary)
                    }
                    HStack {
                        TextField("Message", text: $message)
                            .onSubmit(sendMessage)
                        Button("Send", action: sendMessage).disabled(model.busy)
                    }
                    if let tps = model.tokensPerSecond {
                        Text(String(format: "%.1f tokens/s (decode)", tps)).font(.footnote)
                    }
                }

                if !model.status.isEmpty {
                    Section {
                        Text(model.status).font(.footnote).textSelection(.enabled)
                        if model.busy { Button("Stop", role: .destructive, action: model.cancel) }
                    }
                }
            }
            .navigationTitle("loragen")
        }
    }

    private func weightRow(title: String, id: String, action: @escaping () -> Void) -> some View {
        Button(action: action) {
            HStack {
                Text(title).lineLimit(2)
                Spacer()
                if model.active == id { Image(systemName: "checkmark.circle.fill") }
            }
        }
        .disabled(model.busy || model.selected == nil)
    }

    private func sendMessage() {
        model.send(message)
        message = ""
    }
}
