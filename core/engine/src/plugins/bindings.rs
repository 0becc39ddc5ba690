//! Host bindings of the `trellis:plugin@0.1.0` world, generated from the frozen WIT that the
//! guest SDK uses too. A later breaking version gets its own module beside this one.

wasmtime::component::bindgen!({
    path: "../../host-api/wit/since_v0.1.0",
    world: "trellis:plugin/plugin",
    imports: {
        "trellis:plugin/log": trappable,
        "trellis:plugin/config": trappable,
        default: async | trappable,
    },
    exports: { default: async },
});
