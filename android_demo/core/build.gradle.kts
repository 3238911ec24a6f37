// Plain Kotlin/JVM: no Android dependency, so the same code is unit-tested on any JDK 17+
// (run-tests.sh does it with kotlinc + JUnit 4, without Gradle).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin {
    jvmToolchain(17)
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

dependencies {
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    // the golden vectors live at the repository root: <repo>/tests/golden
    systemProperty("loragen.golden", rootProject.projectDir.resolve("../tests/golden").canonicalPath)
    // TestMain is the command-line runner used by run-tests.sh; Gradle runs the classes directly
    exclude("**/TestMain*", "**/TestSupport*", "**/Golden*", "**/BundleWriter*")
    maxHeapSize = "512m"
}
