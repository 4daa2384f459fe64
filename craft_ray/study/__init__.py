"""Blinded reader study: pair building (`build`, `generate`, `runs`), the study directory (`layout`),
the answers store (`store`), what a reader sees (`readers`), and the analysis (`analysis`, `stats`,
`report`). The web app is `craft_ray.serving.study_app`. Nothing is imported here, so the app's
replicas load only what they use (no torch or diffusers)."""
