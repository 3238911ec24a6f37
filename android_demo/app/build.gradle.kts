plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
    id("org.jetbrains.kotlin.plugin.compose")
}

android {
    namespace = "dev.loragen.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.loragen.demo"
        minSdk = 28
        targetSdk = 35
        versionCode = 1
        versionName = "0.1"
        // ExecuTorch and ONNX Runtime ship arm64-v8a (phones) and x86_64 (emulator) native libraries
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
        // default service URL (the emulator's view of the host); editable in the app
        buildConfigField("String", "DEFAULT_SERVICE_URL", "\"http://10.0.2.2:8080\"")
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            proguardFiles(getDefaultProguardFile("proguard-android-optimize.txt"), "proguard-rules.pro")
        }
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    buildFeatures {
        compose = true
        buildConfig = true
    }
    packaging {
        // both runtimes bundle libc++_shared.so
        jniLibs { pickFirsts += listOf("**/libc++_shared.so") }
        resources { excludes += listOf("META-INF/versions/9/OSGI-INF/MANIFEST.MF") }
    }
}

dependencies {
    implementation(project(":core"))

    implementation(platform("androidx.compose:compose-bom:2024.12.01"))
    implementation("androidx.compose.ui:ui")
    implementation("androidx.compose.material3:material3")
    implementation("androidx.activity:activity-compose:1.9.3")
    implementation("androidx.lifecycle:lifecycle-viewmodel-compose:2.8.7")
    implementation("androidx.lifecycle:lifecycle-runtime-compose:2.8.7")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")

    // runtimes, versions in gradle/libs.versions.toml (executorch = the exporter's pin; README lists
    // the source of every API the app calls): ExecuTorch's LlmModule, ONNX Runtime's OrtSession
    implementation(libs.executorch.android)
    implementation(libs.fbjni)
    implementation(libs.soloader.nativeloader)
    implementation(libs.onnxruntime.android)

    // Ed25519 for devices whose platform JCA has none (core takes a Provider)
    implementation("org.bouncycastle:bcprov-jdk18on:1.79")
}
