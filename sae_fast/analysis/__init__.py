"""Using the features: top contexts (`features`), the static feature browser (`browser`),
labels (`labels`), steering (`steering`), detection monitors (`monitor`) and tracing
(`trace`). `contexts` holds the simple helpers the demo uses."""
