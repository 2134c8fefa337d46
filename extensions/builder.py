"""The pipeline builder: an ipywidgets 8 view over a ``skerry.extensions.pipeline.Pipeline``.

    from skerry.extensions.builder import Builder
    b = Builder(Client.connect())        # or Builder.from_pipeline(p, client)
    b                                    # shows it in the notebook
    b.pipeline                           # the Pipeline built so far (a copy)

It shows the modules (pins, parameters, resources, pool) and the user's datasets; "Add step"
adds a step over a module; each input pin has a dropdown of the sources it may read (only
type-compatible outputs: ``Pipeline.compatible_outputs``); each parameter a field made from
its type (``IntText``, ``FloatText``, ``Text``, ``Checkbox``; a required number without a
value is a ``Text`` until it has one) with its default; each step its pool. Validate, Save
and Launch put every problem next to the field it is about (``Pipeline.validate``,
``problem_of``: the API's own checks); Launch then shows a run ``Monitor``.

The view decides nothing: what to offer and what is wrong come from the model; a field's
error label is ``b.error_label(field)``.
"""

from __future__ import annotations

import copy
import html
import re

import ipywidgets as widgets

from skerry.errors import SkerryError

from .pipeline import (POOLS, Pipeline, Problem, check_param, module_summary, parameter_form,
                       parse_param, problem_of, registry_from)

__all__ = ["Builder", "StepView"]

NOT_WIRED = ("(not wired)", "")
_ERROR = "<span style='color:#c62828'>{}</span>"


def _error_label() -> widgets.HTML:
    return widgets.HTML("")


def _show(label: widgets.HTML, message: str | None) -> None:
    label.value = _ERROR.format(html.escape(message)) if message else ""


def _text(label: widgets.HTML) -> str:
    """The plain sentence a label shows (tests read it)."""
    return html.unescape(re.sub(r"<[^>]+>", "", label.value)).strip()


class StepView(widgets.VBox):
    """One step: its pool, a dropdown per input pin, a field per parameter, an error label each."""

    def __init__(self, builder: Builder, name: str):
        self.builder, self.name = builder, name
        self._quiet = False
        p, registry = builder._pipeline, builder.registry
        step = p.get(name)
        self.error = _error_label()  # the step's own fields: name, module, chunk, mode, output
        self.remove_button = widgets.Button(description="Remove", button_style="warning",
                                            layout=widgets.Layout(width="90px"))
        self.remove_button.on_click(lambda _: builder.remove_step(self.name))
        self.pool = widgets.Dropdown(options=list(POOLS), value=p.pool(name, registry), description="pool",
                                     layout=widgets.Layout(width="160px"))
        self.pool_error = _error_label()
        self.pool.observe(self._pool_changed, "value")
        self.inputs: dict[str, widgets.Dropdown] = {}
        self.input_errors: dict[str, widgets.HTML] = {}
        self.params: dict[str, widgets.Widget] = {}
        self.param_errors: dict[str, widgets.HTML] = {}
        rows: list[widgets.Widget] = []
        module = builder._module(step.module)
        if module is not None:
            for pin in module.inputs:
                dd = widgets.Dropdown(description=pin.name, options=[NOT_WIRED], value="",
                                      layout=widgets.Layout(width="340px"))
                self.inputs[pin.name], self.input_errors[pin.name] = dd, _error_label()
                rows.append(widgets.HBox([dd, widgets.HTML(f"<i>{html.escape(pin.type)}"
                                                           f"{' (optional)' if pin.optional else ''}</i>"),
                                          self.input_errors[pin.name]]))
            self.refresh_options()
            for pin_name, dd in self.inputs.items():
                dd.observe(lambda change, pin=pin_name: self._wire(pin, change["new"]), "value")
            for f in parameter_form(module):
                w = self._param_widget(f, step.params.get(f.name, f.default))
                self.params[f.name], self.param_errors[f.name] = w, _error_label()
                w.observe(lambda change, f=f: self._param_changed(f, change["new"]), "value")
                rows.append(widgets.HBox([w, self.param_errors[f.name]]))
        title = widgets.HTML(f"<b>{html.escape(name)}</b>: {html.escape(step.module)}")
        super().__init__([widgets.HBox([title, self.pool, self.pool_error, self.remove_button]), self.error, *rows],
                         layout=widgets.Layout(border="1px solid #ddd", padding="4px", margin="2px 0"))

    @staticmethod
    def _param_widget(f, value) -> widgets.Widget:
        label = dict(description=f.name, style={"description_width": "initial"})
        typed = value is not None and not isinstance(value, bool)
        if f.type == "bool":
            return widgets.Checkbox(value=bool(value) if isinstance(value, bool) else False, **label)
        if f.type == "int" and typed and isinstance(value, int):
            return widgets.IntText(value=value, **label)
        if f.type == "float" and typed and isinstance(value, int | float):
            return widgets.FloatText(value=value, **label)
        # str, or a number with no value yet (or one that is no number): text, checked by the model
        hint = f"{f.type}, required" if f.required else f.type
        return widgets.Text(value="" if value is None else str(value), placeholder=hint, **label)

    def refresh_options(self) -> None:
        """Offer each input pin the sources the model says it may read (keeping the current one)."""
        p = self.builder._pipeline
        step = p.get(self.name)
        for pin, dd in self.inputs.items():
            offered = p.compatible_outputs(self.name, pin, self.builder.registry)
            current = step.inputs.get(pin, "")
            if current and current not in offered:
                offered.append(current)  # wired in code to something not offered: shown, and validation says why
            options = [NOT_WIRED] + [(src, src) for src in offered]
            self._quiet = True  # new options may reset the value on the way: not the user's choice
            try:
                if list(dd.options) != options:
                    dd.options = options
                dd.value = current
            finally:
                self._quiet = False

    def _wire(self, pin: str, source: str) -> None:
        if self._quiet:
            return
        step = self.builder._pipeline.get(self.name)
        if source:
            step.inputs[pin] = source
        else:
            step.inputs.pop(pin, None)
        _show(self.input_errors[pin], None)
        self.builder._wiring_changed(self.name)

    def _param_changed(self, f, raw) -> None:
        step = self.builder._pipeline.get(self.name)
        value = parse_param(f.type, raw)
        if value is None:
            step.params.pop(f.name, None)
        else:
            step.params[f.name] = value
        module = self.builder._module(step.module)
        _show(self.param_errors[f.name], check_param(module, f.name, value) if module else None)

    def _pool_changed(self, change) -> None:
        self.builder._pipeline.get(self.name).pool = change["new"]
        _show(self.pool_error, None)

    def label(self, parts: list[str]) -> widgets.HTML:
        """The error label of a step field: ``["inputs", pin]``, ``["params", name]``, ``["pool"]``..."""
        if len(parts) == 2 and parts[0] == "inputs" and parts[1] in self.input_errors:
            return self.input_errors[parts[1]]
        if len(parts) == 2 and parts[0] == "params" and parts[1] in self.param_errors:
            return self.param_errors[parts[1]]
        if parts == ["pool"]:
            return self.pool_error
        return self.error

    def labels(self) -> list[widgets.HTML]:
        return [self.error, self.pool_error, *self.input_errors.values(), *self.param_errors.values()]


class Builder(widgets.VBox):
    """The pipeline builder (see the module docstring). ``client``: a
    ``skerry.workload.client.Client`` (datasets, modules, save, launch); ``registry``: the
    modules when there is no client (default: the built-ins)."""

    def __init__(self, client=None, registry=None, pipeline: Pipeline | None = None):
        self.client = client
        self.registry = registry_from(registry if registry is not None else client)
        self._pipeline = copy.deepcopy(pipeline) if pipeline is not None else Pipeline("pipeline")
        self.run_id: int | None = None
        self.monitor = None
        wide = {"style": {"description_width": "initial"}}
        self.name = widgets.Text(value=self._pipeline.name, description="Pipeline name", **wide)
        self.name.observe(lambda c: setattr(self._pipeline, "name", c["new"]), "value")
        self.mask = widgets.Text(value=self._pipeline.mask or "", description="Dataset mask",
                                 placeholder="optional, e.g. raw.run-*", **wide)
        self.mask.observe(lambda c: setattr(self._pipeline, "mask", c["new"] or None), "value")
        self.dataset = widgets.Dropdown(options=self._datasets(), description="Dataset", **wide)
        self.rank = widgets.FloatText(value=1.0, description="Rank", **wide, layout=widgets.Layout(width="160px"))
        self.name_error, self.mask_error, self.dataset_error = _error_label(), _error_label(), _error_label()
        self.modules = widgets.HTML(self._modules_table())
        refs = [m.ref for m in self.registry]
        self.new_module = widgets.Dropdown(options=refs, description="Module", **wide)
        self.new_name = widgets.Text(placeholder="step name (default: the module's)", description="Step", **wide)
        self.add_button = widgets.Button(description="Add step", button_style="primary")
        self.add_button.on_click(lambda _: self.add_step(self.new_name.value.strip(), self.new_module.value))
        self.add_error = _error_label()
        self.step_views: dict[str, StepView] = {}
        self.steps_box = widgets.VBox([])
        self.message = widgets.HTML("")  # problems of the whole pipeline, and what a button did
        self.validate_button = widgets.Button(description="Validate")
        self.save_button = widgets.Button(description="Save", button_style="info")
        self.launch_button = widgets.Button(description="Launch", button_style="success")
        self.validate_button.on_click(lambda _: self.validate())
        self.save_button.on_click(lambda _: self.save())
        self.launch_button.on_click(lambda _: self.launch())
        self.run_box = widgets.VBox([])
        self._render_steps()
        super().__init__([
            widgets.HBox([self.name, self.name_error]), widgets.HBox([self.mask, self.mask_error]),
            widgets.Accordion([self.modules], titles=("Modules",)),
            widgets.HBox([self.new_name, self.new_module, self.add_button, self.add_error]),
            self.steps_box,
            widgets.HBox([self.dataset, self.rank, self.dataset_error]),
            widgets.HBox([self.validate_button, self.save_button, self.launch_button]),
            self.message, self.run_box,
        ])
        self.add_class("skerry-builder")  # a stable name for styles and browser tests

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline, client=None, registry=None) -> Builder:
        """A builder showing ``pipeline`` (a copy of it)."""
        return cls(client, registry, pipeline)

    @property
    def pipeline(self) -> Pipeline:
        """The pipeline built so far (a copy: change it and show it with ``from_pipeline``)."""
        return copy.deepcopy(self._pipeline)

    # ---- building ----

    def add_step(self, name: str, module: str) -> str | None:
        """Add a step over ``module`` (name: ``name`` or the module's); the step's name, or
        None when refused (the reason beside the button)."""
        name = name or self._pipeline.new_step_name(module)
        problem = self._pipeline.check_new_step(name)
        _show(self.add_error, problem)
        if problem:
            return None
        self._pipeline.step(name, module)
        self.new_name.value = ""
        self._render_steps()
        return name

    def remove_step(self, name: str) -> None:
        self._pipeline.remove(name)
        self._render_steps()

    def _render_steps(self) -> None:
        self.step_views = {s.name: StepView(self, s.name) for s in self._pipeline.steps}
        self.steps_box.children = list(self.step_views.values())

    def _wiring_changed(self, name: str) -> None:
        for other, view in self.step_views.items():
            if other != name:
                view.refresh_options()

    def _module(self, ref: str):
        try:
            return self.registry.get(ref)
        except SkerryError:
            return None

    # ---- problems beside their fields ----

    def error_label(self, f: str) -> widgets.HTML:
        """The label showing the problems of field ``f`` (``message`` for the whole pipeline)."""
        if f == "name":
            return self.name_error
        if f == "mask":
            return self.mask_error
        if f == "dataset":
            return self.dataset_error
        parts = f.split(".")
        if parts[0] == "steps" and len(parts) >= 2:
            for step, view in self.step_views.items():  # a step name is one part: no dots in it
                if parts[1] == step:
                    return view.label(parts[2:])
        return self.message

    def error(self, f: str) -> str:
        """The sentence shown beside field ``f`` ("" if none)."""
        return _text(self.error_label(f))

    def show(self, problems: list[Problem], done: str = "") -> None:
        """Clear every label, then put each problem beside its field; ``done`` if there are none."""
        for label in [self.name_error, self.mask_error, self.dataset_error, self.message, self.add_error]:
            _show(label, None)
        for view in self.step_views.values():
            for label in view.labels():
                _show(label, None)
        pipeline_wide = []
        for f, message in problems:
            label = self.error_label(f)
            if label is self.message:
                pipeline_wide.append(message)
            else:
                _show(label, " ".join(filter(None, [_text(label), message])))
        if pipeline_wide:
            _show(self.message, " ".join(pipeline_wide))
        elif problems:
            _show(self.message, f"{len(problems)} problem(s): see the fields marked.")
        else:
            self.message.value = html.escape(done)

    # ---- the buttons ----

    def validate(self) -> list[Problem]:
        """The model's problems (the API's checks), shown beside their fields."""
        problems = self._pipeline.validate(self.registry)
        self.show(problems, "The pipeline is valid.")
        return problems

    def save(self) -> bool:
        """Save as a workflow on the platform; whether it was saved."""
        if self._no_client() or self.validate():
            return False
        try:
            self._pipeline.save(self.client)
        except SkerryError as e:
            self.show([problem_of(str(e), self._pipeline)])
            return False
        self.show([], f"Saved workflow {self._pipeline.name!r}.")
        return True

    def launch(self) -> int | None:
        """Start a run over the chosen dataset (saving first if needed) and show its monitor;
        the run's id, or None when refused (the reason beside its field)."""
        if self._no_client() or self.validate():
            return None
        if not self.dataset.value:
            self.show([Problem("dataset", "Choose the dataset to run over.")])
            return None
        try:
            self.run_id = self._pipeline.launch(self.client, self.dataset.value, self.rank.value)
        except SkerryError as e:
            self.show([problem_of(str(e), self._pipeline)])
            return None
        from .monitor import Monitor

        self.monitor = Monitor(self.client, self.run_id)
        self.run_box.children = [self.monitor]
        self.show([], f"Started run {self.run_id} of {self._pipeline.name!r} over {self.dataset.value!r}.")
        return self.run_id

    def _no_client(self) -> bool:
        if self.client is None:
            _show(self.message, "No platform: make the builder with a client, "
                                "Builder(Client.connect()).")
            return True
        return False

    # ---- lists ----

    def _datasets(self) -> list[str]:
        return [d["name"] for d in self.client.datasets()] if self.client is not None else []

    def _modules_table(self) -> str:
        rows = [module_summary(m) for m in self.registry]
        if not rows:
            return "<i>no modules</i>"
        head = "".join(f"<th style='text-align:left'>{k}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>"
                       for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    def reload(self) -> None:
        """Read the platform's modules and datasets again."""
        if self.client is not None:
            self.registry = registry_from(self.client)
            self.dataset.options = self._datasets()
        self.modules.value = self._modules_table()
        self.new_module.options = [m.ref for m in self.registry]
        self._render_steps()
