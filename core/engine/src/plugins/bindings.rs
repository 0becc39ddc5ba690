//! Host bindings of the `trellis:plugin` worlds, generated from the frozen WIT that the guest
//! SDK uses too. Version 0.2 includes the whole 0.1 world, so its 0.1 interfaces are the very
//! types and traits of 0.1 here: one implementation serves both.

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

/// The interfaces `trellis:plugin@0.2.0` adds.
pub mod v02 {
    wasmtime::component::bindgen!({
        path: [
            "../../host-api/wit/since_v0.1.0",
            "../../host-api/wit/since_v0.2.0",
        ],
        world: "trellis:plugin/plugin@0.2.0",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "trellis:plugin/types@0.1.0": super::trellis::plugin::types,
            "trellis:plugin/kv@0.1.0": super::trellis::plugin::kv,
            "trellis:plugin/alipay@0.1.0": super::trellis::plugin::alipay,
            "trellis:plugin/templates@0.1.0": super::trellis::plugin::templates,
            "trellis:plugin/log@0.1.0": super::trellis::plugin::log,
            "trellis:plugin/config@0.1.0": super::trellis::plugin::config,
            "trellis:plugin/events@0.1.0": super::trellis::plugin::events,
            "trellis:plugin/lifecycle@0.1.0": super::exports::trellis::plugin::lifecycle,
            "trellis:plugin/event-handler@0.1.0": super::exports::trellis::plugin::event_handler,
            "trellis:plugin/http-handler@0.1.0": super::exports::trellis::plugin::http_handler,
        },
    });
}
