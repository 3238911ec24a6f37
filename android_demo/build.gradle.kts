// Versions: AGP 8.7.3 (Gradle 8.9+; the wrapper pins 8.11.1), Kotlin 2.1.0 (JVM + Android + Compose
// compiler plugin). See README.md for the Android Studio steps; nothing here was run by Gradle in CI.
plugins {
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.1.0" apply false
    id("org.jetbrains.kotlin.jvm") version "2.1.0" apply false
    id("org.jetbrains.kotlin.plugin.compose") version "2.1.0" apply false
}
