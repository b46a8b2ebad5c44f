"""A raysuite method of one's own: :data:`flare_unet.method.METHOD` (entry point
``raysuite.methods: flare_unet``). The module is imported when raysuite first asks for the
method, not when this package is."""
