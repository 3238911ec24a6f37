package dev.loragen.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.itemsIndexed
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.horizontalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.FilterChip
import androidx.compose.material3.LinearProgressIndicator
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedButton
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp

class MainActivity : ComponentActivity() {
    private val vm: DemoViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent { MaterialTheme { Surface(Modifier.fillMaxSize()) { DemoScreen(vm) } } }
    }
}

@Composable
fun DemoScreen(vm: DemoViewModel) {
    var message by remember { mutableStateOf("") }
    Column(Modifier.fillMaxSize().padding(12.dp), verticalArrangement = Arrangement.spacedBy(6.dp)) {
        Row(horizontalArrangement = Arrangement.spacedBy(6.dp)) {
            OutlinedTextField(vm.serviceUrl.value, { vm.serviceUrl.value = it }, Modifier.weight(1f), label = { Text("Service URL") }, singleLine = true)
            OutlinedTextField(vm.apiKey.value, { vm.apiKey.value = it }, Modifier.weight(1f), label = { Text("API key") }, singleLine = true)
        }
        Text("Base artifact (backend)")
        Row(Modifier.horizontalScroll(rememberScrollState()), horizontalArrangement = Arrangement.spacedBy(6.dp)) {
            vm.artifacts.forEach { a ->
                FilterChip(selected = vm.selected.value == a, onClick = { vm.selectArtifact(a) }, label = { Text("${a.name} · ${a.backend}") })
            }
            OutlinedButton(onClick = { vm.refreshArtifacts() }) { Text("Rescan") }
        }
        OutlinedTextField(vm.task.value, { vm.task.value = it }, Modifier.fillMaxWidth(), label = { Text("Task description") }, minLines = 2)
        Row(horizontalArrangement = Arrangement.spacedBy(6.dp)) {
            listOf("merged", "lora").forEach { k ->
                FilterChip(selected = vm.kind.value == k, onClick = { vm.kind.value = k }, label = { Text(k) })
            }
            Button(onClick = { vm.specialize() }, enabled = !vm.busy.value && vm.selected.value != null) { Text("Specialize") }
        }
        vm.progress.value?.let { LinearProgressIndicator(progress = { it }, modifier = Modifier.fillMaxWidth()) }
        Row(Modifier.horizontalScroll(rememberScrollState()), horizontalArrangement = Arrangement.spacedBy(6.dp)) {
            FilterChip(selected = vm.active.value == "base", onClick = { vm.useBase() }, label = { Text("Base model") })
            vm.cached.forEach { b ->
                FilterChip(selected = vm.active.value == b.id, onClick = { vm.useCached(b) },
                    label = { Text("${b.task.take(24)} (${b.kind})") })
            }
        }
        Text(vm.status.value, style = MaterialTheme.typography.bodySmall)
        val stats = buildString {
            vm.tokensPerSecond.value?.let { append("%.1f tokens/s".format(it)) }
            vm.savedTokens.value?.let { append("   context saved vs. system prompt: $it tokens per request") }
        }
        if (stats.isNotEmpty()) Text(stats, style = MaterialTheme.typography.bodySmall)
        LazyColumn(Modifier.weight(1f).fillMaxWidth()) {
            itemsIndexed(vm.chat) { _, line ->
                Text((if (line.fromUser) "You: " else "Model: ") + line.text, Modifier.padding(vertical = 4.dp))
            }
        }
        Row(horizontalArrangement = Arrangement.spacedBy(6.dp)) {
            OutlinedTextField(message, { message = it }, Modifier.weight(1f), label = { Text("Message") })
            Button(onClick = { vm.send(message); message = "" }, enabled = !vm.busy.value) { Text("Send") }
            OutlinedButton(onClick = { vm.stop() }) { Text("Stop") }
        }
    }
}
