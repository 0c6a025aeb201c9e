"""The jinja2 templates of the report page and the comparison page (inline CSS, no external resource)."""

_CSS = """
:root { --fg:#1d2327; --muted:#5f6b73; --line:#dde3e8; --bg:#ffffff; --panel:#f6f8fa;
        --ok:#1e7b4a; --ok-bg:#e3f4ea; --mild:#8a5a00; --mild-bg:#fff1d0; --bad:#a32020; --bad-bg:#fde2e1; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color:var(--fg); background:var(--bg); }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 64px; }
header.top { border-bottom: 1px solid var(--line); padding-bottom: 14px; margin-bottom: 8px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h1 small { font-weight: 400; color: var(--muted); font-size: 16px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 18px 0 6px; }
p, li { max-width: 980px; }
.muted { color: var(--muted); }
.meta { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 6px 24px; margin: 10px 0 0; }
.meta div { font-size: 14px; } .meta b { display:block; font-size: 12px; color: var(--muted); font-weight: 600;
  text-transform: uppercase; letter-spacing: .03em; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr)); gap: 14px; margin-top: 12px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
.card h3 { margin-top: 2px; }
.card ul { padding-left: 18px; margin: 6px 0; }
.big { font-size: 22px; font-weight: 650; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { padding: 3px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: var(--panel); font-weight: 600; position: sticky; top: 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:hover td { background: #fafbfc; }
.tablewrap { overflow-x: auto; max-width: 100%; }
.badge { display: inline-block; min-width: 64px; padding: 0 7px; border-radius: 10px; font-size: 12px;
         text-align: center; white-space: nowrap; }
.l-1 { color: var(--muted); } .l0 { background: var(--ok-bg); color: var(--ok); }
.l1 { background: var(--mild-bg); color: var(--mild); } .l2 { background: var(--bad-bg); color: var(--bad); }
.lp1 { background: #e6eefb; color: #2b4f8a; } .lp2 { background: #c9dbf7; color: #173a73; }
details.small { font-size: 13px; } details.small summary { font-weight: 400; color: var(--muted); }
figure { margin: 12px 0 0; } figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; max-width: 1100px; }
details { margin: 8px 0; } summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); border-top: 1px solid var(--line); padding-top: 8px; }
nav.toc { font-size: 14px; margin: 10px 0 0; } nav.toc a { margin-right: 14px; color: #2457a6; text-decoration: none; }
.diff td { background: var(--mild-bg); }
.badge.rw { background: #3a3f44; color: #fff; font-size: 13px; vertical-align: middle; min-width: 0; }
.warnings { background: var(--mild-bg); border: 1px solid #e8c66a; border-radius: 8px; padding: 8px 16px; margin: 16px 0 0; }
.warnings ul { margin: 4px 0; padding-left: 18px; }
"""

_BADGES = """
{% macro badge(level, text) -%}
<span class="badge l{{ level }}">{{ text }}</span>
{%- endmacro %}
{% macro lvl(level) -%}{{ {-1: "not run", 0: "none", 1: "mild", 2: "strong"}[level] }}{%- endmacro %}
"""

_REPORT_TEMPLATE = _BADGES + """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sdaudit report: {{ title }}</title>
<style>""" + _CSS + """</style></head>
<body><main>
<header class="top">
  <h1>sdaudit report: {{ title }} <small>{{ r.model.location }}</small>{% if summary.random_weights %} <span class="badge rw">random weights</span>{% endif %}</h1>
  <div class="meta">
    <div><b>model</b>{{ r.model.name }} ({{ r.model.kind }}){% if r.model.revision %}<br><span class="mono">rev {{ r.model.revision|short(12) }}</span>{% endif %}</div>
    <div><b>images</b>{{ n_images|int }}{% if r.settings.size %} at {{ r.settings.size }}×{{ r.settings.size }} px{% endif %}</div>
    <div><b>protocol</b>{{ r.settings.protocol or "—" }}, t = {{ r.settings.timestep }}, seed {{ r.settings.seed }}</div>
    <div><b>layers</b>{{ summary.n_layers }} ({{ r.settings.layers or "—" }})</div>
    <div><b>audit created</b>{{ r.created or "—" }}</div>
    <div><b>analyses</b>{{ (r.settings.analyses or [])|join(", ") or "—" }}</div>
    {% if summary.controls %}<div><b>controls</b>{% for c in summary.controls %}{{ c.label }}{% if c.model and c.model.name %} <span class="muted">({{ c.model.name }})</span>{% endif %}{% if not loop.last %}<br>{% endif %}{% endfor %}</div>{% endif %}
  </div>
  <nav class="toc"><a href="#findings">Findings</a><a href="#verdicts">Can I trust a layer?</a><a href="#curves">Per-layer curves</a>
  {% if qual_uri %}<a href="#maps">Maps</a>{% endif %}{% if compare_paper %}<a href="#paper">vs. paper</a>{% endif %}<a href="#numbers">Numbers</a><a href="#chance">Chance levels</a><a href="#provenance">Settings &amp; provenance</a></nav>
</header>

{% if summary.warnings or not summary.intervals %}<div class="warnings" role="alert"><b>Read with care</b><ul>
{% for w in summary.warnings %}<li>{{ w }}</li>{% endfor %}
{% if not summary.intervals %}<li>These results have no intervals: the verdicts use the point estimates alone and say “(no interval)”.</li>{% endif %}
</ul></div>{% endif %}

<h2 id="findings">Findings</h2>
<p class="muted">Of {{ summary.n_layers }} layers: <b>{{ summary.n_usable }}</b> without a flag, <b>{{ summary.n_caution }}</b> to use with caution, <b>{{ summary.n_affected }}</b> affected by an artifact{% if summary.n_failed %}, <b>{{ summary.n_failed }}</b> failed{% endif %} (see the <a href="#verdicts">verdict table</a> for the rule).</p>
<div class="cards">
<div class="card"><h3>Positional embedding</h3>
{% set p = summary.position %}
{% if p %}
  <p>A linear probe reads a token's absolute position from its features. At comparison resolution s = {{ p.s }}, <b>{{ p.n_strong }}</b> of {{ p.n_measured }} layers are at least halfway between chance and perfect. Strongest:</p>
  <ul>{% for it in p.top %}<li><code>{{ it.layer }}</code>: <b>{{ it.acc_text }}</b> vs {{ it.chance|pct }} chance ({{ it.classes }} classes per axis on its {{ it.grid }}×{{ it.grid }} grid)</li>{% endfor %}</ul>
  <p class="muted">Weakest: {% for it in p.bottom %}<code>{{ it.layer }}</code> {{ it.acc_text }} vs {{ it.chance|pct }}{% if not loop.last %}; {% endif %}{% endfor %}.</p>
{% else %}<p class="muted">The position probe was not run.</p>{% endif %}
</div>
<div class="card"><h3>Border and corner artifacts</h3>
{% set b = summary.borders %}
{% if b %}
  <p>Tokens at the image edge become more alike than the same content away from the edge where the relative similarity is above 1. Corner tokens: <b>{{ b.n_corner_above_1 }}</b> of {{ b.n_corner }} layers above 1; border tokens: {{ b.n_border_above_1 }} of {{ b.n_border }}{% if summary.intervals %} (counted where the whole interval is above 1{% if summary.controls %} and above the control{% endif %}){% endif %}.</p>
  <ul>{% for name, v, text in b.top_corner %}<li><code>{{ name }}</code>: corner <b>{{ text }}</b></li>{% endfor %}
  {% for name, v, text in b.top_border[:1] %}<li><code>{{ name }}</code>: border <b>{{ text }}</b> (highest)</li>{% endfor %}</ul>
  {% if b.ill %}<p class="muted">Ratio not meaningful (the full image's reference similarity is below {{ t.border_min_reference }}, or the ratio ≤ 0), left out above: {% for n in b.ill %}<code>{{ n }}</code>{% if not loop.last %}, {% endif %}{% endfor %}.</p>{% endif %}
  {% if b.undefined %}<p class="muted">Border and corner ratios not defined (grid too small): {% for n in b.undefined %}<code>{{ n }}</code>{% if not loop.last %}, {% endif %}{% endfor %}.</p>{% endif %}
{% else %}<p class="muted">The border analysis was not run.</p>{% endif %}
</div>
<div class="card"><h3>High-norm anomalies</h3>
{% set a = summary.anomalies %}
{% if a %}
  <p>{% if a.count is not none %}<span class="big">{{ a.count|int }}</span> anomalies{% if a.images_with is not none %} in <b>{{ a.images_with|int }}</b> of {{ a.n_images|int }} images ({{ a.share|pct }}){% endif %}, detected on <code>{{ a.layer }}</code>.{% else %}Anomalies on <code>{{ a.layer }}</code>.{% endif %}</p>
  {% if a.peak %}<p>Peak relative norm: <b>{{ a.peak[1]|pm(a.peak[2]) }}</b>{% if a.peak_interval[0] is not none %} (95 % interval of the mean [{{ a.peak_interval[0]|ratio }}, {{ a.peak_interval[1]|ratio }}]){% endif %} at <code>{{ a.peak[0] }}</code>.</p>{% endif %}
  {% if summary.recurrence %}<p class="recurrence">{{ summary.recurrence }}</p>{% endif %}
  {% set clearly %}{% if summary.intervals %} by its whole interval{% endif %}{% if summary.controls %} and beyond the control{% endif %}{% endset %}
  <p>{% if a.above %}Relative norm at least {{ t.anomaly_strong|ratio }}{{ clearly }} in {{ a.above_text }}{% if a.above|length <= 3 %} ({{ a.above|length }} layer{{ "s" if a.above|length != 1 }}){% endif %}.{% else %}No layer has a relative norm of at least {{ t.anomaly_strong|ratio }}{{ clearly }}.{% endif %}</p>
  {% if a.above|length > 3 %}<details class="small"><summary>the {{ a.above|length }} layers</summary>{% for n in a.above %}<code>{{ n }}</code>{% if not loop.last %}, {% endif %}{% endfor %}</details>{% endif %}
{% else %}<p class="muted">The anomaly analysis was not run.</p>{% endif %}
</div>
</div>

<h2 id="verdicts">Can I trust this layer's features?</h2>
<p>Flags per layer. <b>Position</b>: above-chance skill of the probe at s = {{ finest or "—" }}, (acc − chance) / (1 − chance); strong ≥ {{ t.position_strong }}, mild ≥ {{ t.position_mild }}. A positional code is expected in a U-Net, but similarity between tokens then partly reflects where they are, not what they show: at most <i>caution</i>.
Position badges are blue: information, not an artifact.
<b>Border</b>: strong if corner ≥ {{ t.corner_strong }} or border ≥ {{ t.border_strong }}; mild if corner ≥ {{ t.corner_mild }} or border ≥ {{ t.border_mild }} (relative similarity; a ratio whose reference similarity in the full image is below {{ t.border_min_reference }} is not meaningful and raises no flag).
<b>Anomalies</b>: relative norm of the anomaly patches strong ≥ {{ t.anomaly_strong }}, mild ≥ {{ t.anomaly_mild }}{% if r.anomalies and r.anomalies.layer %}; the detector searches <code>{{ r.anomalies.layer }}</code> only ("not searched" elsewhere: other layers are measured at its finds){% endif %}.
Verdict: <span class="badge l2">affected</span> if a strong border or anomaly flag, <span class="badge l1">caution</span> if any other flag or a border ratio that is not meaningful, else <span class="badge l0">usable</span>.
A flag needs evidence: with a 95 % interval, its low end must clear the threshold (else “uncertain (interval spans the threshold)”){% if summary.controls %}, and the interval of the difference to each control ({% for c in summary.controls %}{{ c.label }}{% if not loop.last %}, {% endif %}{% endfor %}) must lie above 0 (else “not distinguishable from the … control”){% endif %}. Results without intervals use the point estimates, marked “(no interval)”.</p>
<div class="tablewrap"><table>
<thead><tr><th>#</th><th>layer</th><th>grid</th><th>position</th><th>border</th><th>anomalies</th><th>verdict</th><th>why</th></tr></thead>
<tbody>
{% for v in summary.verdicts %}<tr>
<td class="n">{{ loop.index0 }}</td><td><code>{{ v.layer }}</code></td><td class="n">{{ v.grid }}</td>
<td>{{ badge("p" ~ v.pos_level if v.pos_level > 0 else v.pos_level, v.acc_text) }}</td>
<td>{{ badge(v.border_level, v.border_text) }}</td>
<td>{{ badge(v.anomaly_level, v.anomaly_text) }}</td>
<td>{{ badge(v.overall, v.label) }}</td><td class="muted">{{ v.notes }}</td></tr>
{% endfor %}</tbody></table></div>
<p class="muted">Badges show: probe accuracy at s = {{ finest or "—" }}; corner / border relative similarity; anomaly relative norm{% if summary.intervals %}; each with its 95 % interval over images in brackets{% endif %}.</p>

<h2 id="curves">Per-layer curves</h2>
<figure><img alt="probe accuracy, border similarity and anomaly norm per layer" src="{{ quant_uri }}">
<figcaption>As in the paper's Fig. 2: layers in execution order, labelled by kind (res = resnet, attn = transformer, down/up = down-/upsampler, conv = conv_in/conv_out) with their block below (down0 = <code>down_blocks[0]</code>, mid = <code>mid_block</code>, …).
Top: probe accuracy per comparison resolution s (darker = finer) and, dotted, chance 1/min(s, n). Middle: relative similarity of corner and border tokens, log₂ axis; above the dashed line at 1, edge tokens are more alike than the same content elsewhere. Bottom: relative norm of the anomaly patches on every layer (mean{% if summary.intervals %} with its 95 % interval{% else %} ± std over anomalies{% endif %}), log₂ axis.{% if summary.intervals %} Shaded bands: 95 % bootstrap intervals over images.{% endif %}{% if summary.controls %} Grey dashed: the control{{ "s" if summary.controls|length > 1 }} ({% for c in summary.controls %}{{ c.label }}{% if not loop.last %}, {% endif %}{% endfor %}).{% endif %} Open triangles at the top edge: ratios that are not meaningful or not defined, drawn there instead of at their value.{% if compare_paper and agreement %} Thin grey dash-dot: the published numbers ({{ paper_name }}).{% if probe_note %} <b>{{ probe_note }}</b>{% endif %}{% endif %} Files: <code>figures/quantitative.svg</code>, <code>.png</code>.</figcaption></figure>

{% if timestep_uri %}
<h2 id="timesteps">Per timestep</h2>
<figure><img alt="per-layer curves at each audited timestep" src="{{ timestep_uri }}">
<figcaption>The same three panels at each audited timestep ({% for t in timesteps %}t = {{ t }}{% if not loop.last %}, {% endif %}{% endfor %}; the tables above are for t = {{ timesteps[0] }}), one colour family per timestep. Files: <code>figures/timesteps.svg</code>, <code>.png</code>; every timestep's numbers are in <code>results.json</code> (<code>timesteps</code>) and <code>results.csv</code>.</figcaption></figure>
{% endif %}

{% if qual_uri %}
<h2 id="maps">Similarity and norm maps</h2>
<figure><img alt="similarity maps and norm maps of the shown images" src="{{ qual_uri }}">
<figcaption>As in the paper's Fig. 1/3. Top row: the model inputs. Then per row the similarity ({% for ex in r.maps.examples %}{{ ex.title or ex.id }}: {{ ex.measure }} on <code>{{ ex.layer }}</code>{% if not loop.last %}; {% endif %}{% endfor %}) of the reference token (red square, in its image's column) to every token of each image, one colour scale per row. Norm rows: the L2 norm of every token{% if summary.anomalies %}; cyan boxes on <code>{{ summary.anomalies.layer }}</code> are the detected anomalies (2×2 tokens){% endif %}.
Files: <code>figures/qualitative.svg</code>, <code>.png</code>.</figcaption></figure>
{% elif maps_present %}<p class="muted">maps.npz has no maps to show.</p>{% endif %}

{% if compare_paper %}
<h2 id="paper">Comparison with the published numbers</h2>
{% if agreement %}
<p>Published numbers of {{ paper_name }} (Loos &amp; Linhardt 2025; border similarity with the corrected pair counts). The published run used the paper protocol (pixels in [0, 1], sampled latents, one noise tensor shared by all images, an Adam probe trained 5 epochs); this audit used protocol <b>{{ r.settings.protocol or "—" }}</b>{% if r.settings.probe_method %} and probe <b>{{ r.settings.probe_method }}</b>{% endif %}, so the curves should agree in shape, not to the digit.</p>
{% if probe_note %}<p class="probe-note"><b>Probe:</b> {{ probe_note }} Probe accuracies are therefore not directly comparable.</p>{% endif %}
<div class="tablewrap"><table><thead><tr><th>metric</th><th>layers</th><th>Pearson r</th><th>median |Δ|</th><th>largest |Δ|</th><th>at layer</th><th>this audit</th><th>published</th></tr></thead><tbody>
{% for m in agreement %}<tr><td>{{ m.label }}</td><td class="n">{{ m.n }}</td><td class="n">{{ "%.3f"|format(m.r) if m.r is not none else "—" }}</td><td class="n">{{ "%.3f"|format(m.median) }}</td><td class="n">{{ "%.3f"|format(m.worst) }}</td><td><code>{{ m.worst_layer }}</code></td><td class="n">{{ "%.3f"|format(m.ours) }}</td><td class="n">{{ "%.3f"|format(m.theirs) }}</td></tr>
{% endfor %}</tbody></table></div>
{% if paper_labels %}<p>Published hand labels: {{ paper_labels[0] }} anomalies in {{ paper_labels[1] }} of {{ paper_labels[2] }} images{% if summary.anomalies and summary.anomalies.count is not none %}; this audit detected {{ summary.anomalies.count|int }} in {{ summary.anomalies.images_with|int }} of {{ summary.anomalies.n_images|int }}{% endif %}.</p>{% endif %}
{% else %}<p class="muted">No published numbers for model “{{ r.model.name }}” (published: SD-1.5, SD-2.1, SD-Turbo).</p>{% endif %}
{% endif %}

<h2 id="numbers">Per-layer numbers</h2>
<div class="tablewrap"><table>
<thead><tr><th>#</th><th>layer</th><th>kind</th><th>grid</th>{% for s in resolutions %}<th>acc s={{ s }}</th>{% endfor %}{% if finest %}<th>chance s={{ finest }}</th>{% endif %}<th>corner</th><th>border</th><th>other</th><th>anomaly rel. norm</th>{% for c in summary.controls %}<th>beyond control: {{ c.label }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in r.table %}<tr><td class="n">{{ loop.index0 }}</td><td><code>{{ row.layer }}</code></td><td>{{ row.kind }}</td><td class="n">{{ row.grid }}</td>
{% for s in resolutions %}<td class="n">{{ row|ci_pct("probe_acc_%d"|format(s)) }}</td>{% endfor %}{% if finest %}<td class="n muted">{{ summary.verdicts[loop.index0].chance|pct }}</td>{% endif %}
{% if row.borders_undefined %}<td class="muted" colspan="3">{{ row.borders_undefined }}</td>{% else %}<td class="n">{{ row|ci_ratio("corner_rel_sim") }}</td><td class="n">{{ row|ci_ratio("border_rel_sim") }}</td><td class="n">{{ row|ci_ratio("other_rel_sim") }}</td>{% endif %}<td class="n">{% if row.anomaly_rel_norm_mean_low is not none and row.anomaly_rel_norm_mean_high is not none %}{{ row|ci_ratio("anomaly_rel_norm_mean") }}{% else %}{{ row.anomaly_rel_norm_mean|pm(row.anomaly_rel_norm_std) }}{% endif %}</td>
{% for cell in beyond[loop.index0] %}<td class="n">{% for d in cell %}{{ d }}{% if not loop.last %}<br>{% endif %}{% else %}—{% endfor %}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>
<p class="muted">Probe accuracy: mean of row and column accuracy on held-out images ({{ ((r.settings.train_fraction or 0) * 100)|round|int }}% of the images train the probe). Relative similarity: mean pairwise cosine within the group in the cropped image divided by the same in the full image (corner, border = rest of the outer ring, other = interior). Anomaly relative norm: mean norm of the anomaly patch divided by the map's mean norm{% if summary.intervals %}. In brackets: the 95 % bootstrap interval over images (without one, ± is the std over anomalies){% endif %}.{% if summary.controls %} Beyond control: this model minus the control, with the 95 % interval of the difference; a flag counts only where that interval lies above 0.{% endif %}</p>

<h2 id="chance">Chance levels</h2>
<p>The probe predicts a row and a column out of n for a layer with an n × n grid. At comparison resolution s, a prediction counts when it falls in the right one of s bins (<code>pred·s // n == label·s // n</code>); with fewer tokens than bins (n &lt; s) every token is its own bin. Guessing is therefore right with probability <b>1 / min(s, n)</b>. The same accuracy means more on a finer grid: compare each layer with its own chance level (dotted lines in the figure).</p>
<table><thead><tr><th>grid n</th>{% for s in resolutions %}<th>s = {{ s }}</th>{% endfor %}</tr></thead><tbody>
{% for n in grids %}<tr><td class="n">{{ n }}×{{ n }}</td>{% for s in resolutions %}<td class="n">{{ (1.0 / ([s, n]|min))|pct }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table>

<h2 id="provenance">Settings &amp; provenance</h2>
<div class="tablewrap"><table><tbody>
{% for k, v in settings %}<tr><th>{{ k }}</th><td class="mono">{{ v }}</td></tr>{% endfor %}
<tr><th>model</th><td class="mono">{{ r.model.name }} · {{ r.model.kind }} · {{ r.model.location }}{% if r.model.revision %} · rev {{ r.model.revision }}{% endif %}{% if r.model.weights_sha256 %} · weights sha256 {{ r.model.weights_sha256 }}{% endif %}</td></tr>
{% for k, v in (r.versions or {}).items() %}<tr><th>{{ k }}</th><td class="mono">{{ v }}</td></tr>{% endfor %}
<tr><th>results format</th><td class="mono">{{ r.format }}</td></tr>
<tr><th>audit folder</th><td class="mono">{{ result_dir }}</td></tr>
</tbody></table></div>
{% if r.images %}
<details><summary>{{ r.images|length }} images and their SHA-256</summary>
<div class="tablewrap"><table><thead><tr><th>#</th><th>source</th><th>size</th><th>sha256</th></tr></thead><tbody>
{% for im in r.images %}<tr><td class="n">{{ im.index }}</td><td class="mono">{{ im.source }}</td><td class="n">{{ im.width }}×{{ im.height }}</td><td class="mono">{{ im.sha256 }}</td></tr>
{% endfor %}</tbody></table></div></details>
{% endif %}
<footer>Generated by sdaudit {{ report_version }} on {{ generated }} from results.json{% if maps_present %} and maps.npz{% endif %}. Method: Loos &amp; Linhardt, “Latent Diffusion U-Net Representations Contain Positional Embeddings and Anomalies” (ICLR 2025 DeLTa workshop).</footer>
</main></body></html>
"""

_COMPARE_TEMPLATE = _BADGES + """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sdaudit comparison: {{ runs|map(attribute="label")|join(" vs ") }}</title>
<style>""" + _CSS + """</style></head>
<body><main>
<header class="top">
  <h1>sdaudit comparison <small>{{ runs|length }} audits</small></h1>
  <div class="tablewrap"><table><thead><tr><th>run</th><th>model</th><th>images</th><th>protocol</th><th>layers</th><th>folder</th></tr></thead><tbody>
  {% for run in runs %}<tr><td><b>{{ run.label }}</b>{% if run.sum.random_weights %} <span class="badge rw">random weights</span>{% endif %}</td><td>{{ run.r.model.name }} <span class="muted">({{ run.r.model.kind }}, {{ run.r.model.location }})</span></td><td class="n">{{ run.n_images|int }}</td><td>{{ run.r.settings.protocol or "—" }}</td><td class="n">{{ run.r.table|length }}</td><td class="mono">{% if run.has_report %}<a href="{{ run.report_href }}">{{ run.dir }}</a>{% else %}{{ run.dir }}{% endif %}</td></tr>
  {% endfor %}</tbody></table></div>
  {% for run in runs %}{% if run.sum.warnings %}<div class="warnings" role="alert"><b>{{ run.label }}: read with care</b><ul>{% for w in run.sum.warnings %}<li>{{ w }}</li>{% endfor %}</ul></div>{% endif %}{% endfor %}
  {% for note in probe_notes %}<p class="probe-note"><b>Probe:</b> {{ note }}</p>{% endfor %}
</header>

<h2>Key numbers</h2>
<div class="tablewrap"><table><thead><tr><th></th>{% for run in runs %}<th>{{ run.label }}</th>{% endfor %}</tr></thead><tbody>
<tr><th>strongest positional code</th>{% for run in runs %}<td>{% set p = run.sum.position %}{% if p and p.top %}<code>{{ p.top[0].layer }}</code><br>{{ p.top[0].acc_text }} vs {{ p.top[0].chance|pct }} chance (s = {{ p.s }}){% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>layers with strong positional code</th>{% for run in runs %}<td class="n">{% set p = run.sum.position %}{% if p %}{{ p.n_strong }} / {{ p.n_measured }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>peak corner similarity</th>{% for run in runs %}<td>{% set b = run.sum.borders %}{% if b and b.top_corner %}<code>{{ b.top_corner[0][0] }}</code><br>{{ b.top_corner[0][2] }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>layers with corner &gt; 1</th>{% for run in runs %}<td class="n">{% set b = run.sum.borders %}{% if b %}{{ b.n_corner_above_1 }} / {{ b.n_corner }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>anomalies (images with)</th>{% for run in runs %}<td class="n">{% set a = run.sum.anomalies %}{% if a and a.count is not none %}{{ a.count|int }} ({{ a.images_with|int }} / {{ a.n_images|int }}){% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>peak anomaly relative norm</th>{% for run in runs %}<td>{% set a = run.sum.anomalies %}{% if a and a.peak %}<code>{{ a.peak[0] }}</code><br>{{ a.peak[1]|pm(a.peak[2]) }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>layers with anomaly rel. norm &gt; {{ t.anomaly_strong }}</th>{% for run in runs %}<td class="n">{% set a = run.sum.anomalies %}{% if a %}{{ a.above|length }}{% else %}—{% endif %}</td>{% endfor %}</tr>
<tr><th>verdicts usable / caution / affected</th>{% for run in runs %}<td class="n">{{ run.sum.n_usable }} / {{ run.sum.n_caution }} / {{ run.sum.n_affected }}</td>{% endfor %}</tr>
</tbody></table></div>

<h2>Per-layer curves</h2>
<figure><img alt="per-layer curves of all runs" src="{{ fig_uri }}">
<figcaption>All runs in one figure, aligned on layer names (a layer a run lacks is a gap). Colour family and line style = run; within a run the probe accuracy at s = 8 is light and at s = 64 dark (top; the other resolutions are on each run's own page), corner tokens dark and border tokens light (middle). Dotted: chance 1/min(s, n). Log₂ axes in the middle and bottom panels, dashed line at 1. Shaded bands, where a run has them: 95 % intervals over images; grey dashed: control runs; open triangles at the top edge: ratios not meaningful or not defined.{% if paper_runs %} Thin dash-dot: published numbers for {{ paper_runs|join(", ") }}.{% endif %} File: <code>figures/comparison.svg</code>, <code>.png</code>.</figcaption></figure>

<h2>Per-layer numbers side by side</h2>
<div class="tablewrap"><table>
<thead><tr><th rowspan="2">layer</th>{% for run in runs %}<th colspan="3" style="text-align:center">{{ run.label }}</th>{% endfor %}</tr>
<tr>{% for run in runs %}<th>acc s={{ run.s or "—" }}</th><th>corner</th><th>anomaly</th>{% endfor %}</tr></thead>
<tbody>{% for row in layers %}<tr><td><code>{{ row.layer }}</code></td>{% for c in row.cells %}{% if c %}<td class="n">{{ c.acc }}</td><td class="n">{{ c.corner }}</td><td class="n">{{ c.anomaly }}</td>{% else %}<td class="n muted" colspan="3">not in this run</td>{% endif %}{% endfor %}</tr>
{% endfor %}</tbody></table></div>

<h2>Settings</h2>
<div class="tablewrap"><table><thead><tr><th>setting</th>{% for run in runs %}<th>{{ run.label }}</th>{% endfor %}</tr></thead><tbody>
{% for s in settings_rows %}<tr{% if s.differs %} class="diff"{% endif %}><th>{{ s.key }}</th>{% for v in s.vals %}<td class="mono">{{ v }}</td>{% endfor %}</tr>{% endfor %}
</tbody></table></div>
<p class="muted">Highlighted: settings that differ between the runs.</p>
<footer>Generated by sdaudit {{ report_version }} on {{ generated }}. Each run's own page: <code>sdaudit report DIR</code>.</footer>
</main></body></html>
"""
