"""Recipe for the embedded tiny-shapes text-to-image model."""
