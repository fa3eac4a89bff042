"""Discovery messages from user walkthroughs: each names the bad line, folder or value and says how to fix it."""

from __future__ import annotations

import codecs
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLASSES, draw, write_class_folders, write_kaggle

from extract import DataError, discover


def _kaggle_rows(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    return images, csv, csv.read_text().splitlines()


# 1. empty cells in labels.csv


def test_a_line_that_is_just_a_comma_is_named_by_line_and_both_columns(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    csv.write_text("\n".join(lines + [","]) + "\n")
    line = len(lines) + 1  # the header is line 1
    with pytest.raises(DataError, match=rf"^line {line} of labels.csv is empty in both columns \(id and breed\)\. "
                                        r"Fill them in or delete those lines\.$"):
        discover(images, labels=csv)


def test_empty_ids_and_labels_are_told_apart_and_lines_count_blank_and_quoted_lines(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    header, rows = lines[0], lines[1:]
    no_breed = rows[3].split(",")[0]
    # A blank line and a quoted id spanning two lines: pandas reads each as no row/one row; lines still count.
    text = [header, rows[0], "", rows[1], ",", ",circle", f"{no_breed},", '"two\nlines",square', ",", rows[2]]
    csv.write_text("\n".join(text + rows[4:]) + "\n")
    message = ("lines 5, 10 of labels.csv are empty in both columns (id and breed); "
               "line 6 of labels.csv has an empty 'id' but a breed; "
               f"1 rows of labels.csv have an empty 'breed', e.g. {no_breed} (line 7). "
               "Fill them in or delete those lines.")
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        discover(images, labels=csv)


def test_two_comma_lines_are_empty_lines_not_a_duplicated_id(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    csv.write_text("\n".join(lines + [",", " , "]) + "\n")
    with pytest.raises(DataError, match=rf"^lines {len(lines) + 1}, {len(lines) + 2} of labels.csv are empty in both"):
        discover(images, labels=csv)


# 2. another separator than commas


@pytest.mark.parametrize("sep, shown", [(";", "';'"), ("\t", "tab"), ("|", "'|'")])
def test_a_labels_csv_separated_otherwise_is_read_with_its_separator_and_a_note(tmp_path, sep, shown):
    images, csv, lines = _kaggle_rows(tmp_path)
    want = {it.relpath: it.label for it in discover(images, labels=csv).items}
    csv.write_text("\n".join(line.replace(",", sep) for line in lines) + "\n")
    found = discover(images, labels=csv)
    assert {it.relpath: it.label for it in found.items} == want
    assert found.class_names == list(CLASSES)
    assert found.notes == [f"labels.csv is separated by {shown}, not commas (its header has no comma): "
                           f"read it with {shown}, columns id, breed"]


def test_a_semicolon_csv_with_a_comma_in_a_label_keeps_the_label_whole(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    csv.write_text("\n".join(line.replace(",", ";").replace("square", "square, big") for line in lines) + "\n")
    assert discover(images, labels=csv).class_names == ["circle", "square, big", "stripes"]


def test_a_badly_split_semicolon_csv_names_its_separator(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    csv.write_text("\n".join(line.replace(",", ";") for line in lines) + "\nabc;circle;extra\n")
    with pytest.raises(DataError, match=r"is not a readable CSV \(.*Expected 2 fields in line 8, saw 3\).*"
                                        r"one row per image, separated by ';' like its header\.$"):
        discover(images, labels=csv)


def test_a_comma_csv_with_semicolons_in_its_values_is_read_with_commas(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    csv.write_text("\n".join(lines).replace("stripes", "stripes;wide") + "\n")
    found = discover(images, labels=csv)
    assert found.class_names == ["circle", "square", "stripes;wide"]
    assert found.notes == []


# 3. DATA one level above the images of LABELS=


def test_ids_found_one_folder_down_say_which_data_to_pass(tmp_path):
    images, csv, _ = _kaggle_rows(tmp_path)
    (tmp_path / "k" / "test").mkdir()
    parent = images.parent
    with pytest.raises(DataError, match=rf"^6 ids in labels.csv have no image in DATA={parent}, e.g. .*\. "
                                        rf"They are in {images}: pass DATA={images}\.$"):
        discover(parent, labels=csv)


def test_ids_partly_found_one_folder_down_are_counted(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    csv.write_text("\n".join(lines + ["nowhere,circle"]) + "\n")
    with pytest.raises(DataError, match=rf"^7 ids .* 6 of them are in {images}: is DATA={images} the image folder\?$"):
        discover(images.parent, labels=csv)


def test_ids_found_nowhere_keep_the_plain_advice(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    csv.write_text("\n".join(lines + ["nowhere,circle"]) + "\n")
    with pytest.raises(DataError, match=rf"^1 id in labels.csv has no image in DATA={images}: nowhere \(line "
                                        rf"{len(lines) + 1}\)\. Fix DATA= or remove that row\.$"):
        discover(images, labels=csv)


def test_a_labels_typo_says_what_labels_is_and_names_the_csv_files_near_data(tmp_path):
    images, csv = write_kaggle(tmp_path / "k", per_class=1)
    with pytest.raises(DataError, match=rf"^LABELS={tmp_path / 'k' / 'lables.csv'} does not exist\. Pass LABELS= "
                                        rf"the CSV that gives each image's class \(an id column and a label column, "
                                        rf"as Kaggle's labels.csv has id,breed\); CSV files near DATA: {csv}\.$"):
        discover(images, labels=tmp_path / "k" / "lables.csv")
    csv.unlink()
    with pytest.raises(DataError, match=rf"^LABELS={images} is a folder\. Pass LABELS= .*id,breed\)\.$"):
        discover(images, labels=images)


def test_a_kaggle_folder_without_labels_says_to_pass_labels_and_names_the_csv(tmp_path):
    images, csv = write_kaggle(tmp_path / "k", per_class=2)
    fix = (f"has 6 files directly in it and no class subfolders: pass DATA={images} LABELS={csv} to read each "
           f"image's class from a CSV (an id column and a label column, as Kaggle's labels.csv has id,breed), or "
           f"put each class's images in its own subfolder {images}/<class>/.")
    with pytest.raises(DataError, match=rf"^DATA={images} {re.escape(fix)}$"):
        discover(images)
    # DATA= the Kaggle download itself (train/ beside labels.csv), with or without its test/ folder
    with pytest.raises(DataError, match=rf"^{images} \(in DATA={images.parent}\) {re.escape(fix)}$"):
        discover(images.parent)
    (images.parent / "test").mkdir()
    shutil.copy(next(images.glob("*.jpg")), images.parent / "test")
    with pytest.raises(DataError, match=rf"^{images} \(in DATA={images.parent}\) {re.escape(fix)}$"):
        discover(images.parent)
    csv.unlink()
    with pytest.raises(DataError, match=rf"^DATA={images} has 6 files .*: pass DATA={images} LABELS=<csv> to read"):
        discover(images)


def test_a_repeated_id_is_counted_in_the_singular(tmp_path):
    images, csv, lines = _kaggle_rows(tmp_path)
    csv.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(DataError, match=rf"^1 id appears more than once in labels.csv, e.g. {lines[1].split(',')[0]}\. "
                                        rf"Keep one row per image\.$"):
        discover(images, labels=csv)


# 4. class folders one level too deep


def test_class_folders_one_level_too_deep_are_noted(tmp_path):
    data = tmp_path / "d"
    write_class_folders(data / "charts", per_class=2)
    write_class_folders(data / "charts_v2", per_class=2)
    found = discover(data)
    assert found.class_names == ["charts", "charts_v2"]
    assert found.notes == [
        f"class {c!r} holds its images in sub-folders circle/, square/, stripes/ of {c}/, none directly in it: "
        f"if those are the classes, pass DATA={data / c}" for c in ("charts", "charts_v2")
    ]


def test_class_folders_with_their_own_images_or_one_sub_folder_are_not_noted(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    rng = np.random.default_rng(0)
    for sub in ("2019", "2020"):  # circle/ holds images itself too
        (data / "circle" / sub).mkdir()
        draw("circle", rng).save(data / "circle" / sub / "x.png")
    (data / "square" / "square_00.png").unlink()
    (data / "square" / "square_01.png").unlink()
    (data / "square" / "scans").mkdir()  # one sub-folder only
    for name in ("y.png", "z.png"):
        draw("square", rng).save(data / "square" / "scans" / name)
    assert discover(data).notes == []


def test_one_class_folder_one_level_too_deep_suggests_it_as_data(tmp_path):
    data = tmp_path / "d"
    write_class_folders(data / "charts", per_class=2)
    with pytest.raises(DataError, match=rf"only one class with images \('charts'\); a classifier needs at least 2\. "
                                        rf"Its images are in sub-folders circle/, square/, stripes/ of charts/: "
                                        rf"if those are the classes, pass DATA={data / 'charts'}\.$"):
        discover(data)


def test_train_class_folders_one_level_too_deep_are_noted(tmp_path):
    write_class_folders(tmp_path / "d" / "train" / "charts", per_class=2)
    write_class_folders(tmp_path / "d" / "train" / "maps", per_class=2)
    write_class_folders(tmp_path / "d" / "test", per_class=1)
    shutil.rmtree(tmp_path / "d" / "test" / "stripes")
    for c in ("circle", "square"):
        (tmp_path / "d" / "test" / c).rename(tmp_path / "d" / "test" / {"circle": "charts", "square": "maps"}[c])
    found = discover(tmp_path / "d")
    assert found.notes == [
        f"class {c!r} holds its images in sub-folders circle/, square/, stripes/ of train/{c}/, none directly in it: "
        f"if those are the classes, move them up into train/ (and test/)" for c in ("charts", "maps")
    ]


# 5. TEST= that overlaps DATA


def test_test_equal_to_class_folder_data_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    with pytest.raises(DataError, match=rf"^TEST={data} is DATA={data} itself, so every training image would also "
                                        r"be cached as an unlabelled test row\. TEST= must be a separate folder"):
        discover(data, test=data)
    with pytest.raises(DataError, match=r"is DATA=.* itself"):
        discover(data, test=tmp_path / "d" / "circle" / "..")  # the same folder, spelled otherwise


def test_test_inside_class_folder_data_is_refused(tmp_path):
    data = write_class_folders(tmp_path / "d", per_class=2)
    with pytest.raises(DataError, match=rf"^TEST={data / 'circle'} is inside DATA={data}, whose images are all read "
                                        r"as training images .*TEST= must be a separate folder"):
        discover(data, test=data / "circle")


def test_test_containing_data_is_refused(tmp_path):
    images, csv, _ = _kaggle_rows(tmp_path)
    with pytest.raises(DataError, match=rf"^TEST={images.parent} contains DATA={images}, so every training image"):
        discover(images, labels=csv, test=images.parent)


def test_test_equal_to_the_labels_image_folder_is_refused(tmp_path):
    images, csv, _ = _kaggle_rows(tmp_path)
    with pytest.raises(DataError, match=rf"^TEST={images} is DATA={images} itself"):
        discover(images, labels=csv, test=images)


def test_a_test_folder_beside_the_labels_image_folder_is_accepted(tmp_path):
    images, csv, _ = _kaggle_rows(tmp_path)
    test = images.parent / "test"
    test.mkdir()
    draw("circle", np.random.default_rng(0)).save(test / "abc.jpg")
    found = discover(images, labels=csv, test=test)
    assert [(it.relpath, it.label) for it in found.items if it.split == "test"] == [("test/abc.jpg", -1)]


def test_test_equal_to_the_auto_detected_test_folder_is_refused(tmp_path):
    data = tmp_path / "d"
    write_class_folders(data / "train", per_class=2)
    write_class_folders(data / "test", per_class=1)
    with pytest.raises(DataError, match=rf"^TEST={data / 'test'} is {data / 'test'}, which DATA={data} already reads "
                                        r"as the labelled test set \(it has train/ and test/\): drop TEST="):
        discover(data, test=data / "test")
    with pytest.raises(DataError, match=rf"^TEST={data / 'train'} is inside DATA={data}, which has train/ and test/"):
        discover(data, test=data / "train")


# 6. class folder names that are not UTF-8


def test_a_class_folder_not_named_in_utf8_is_refused_naming_it(tmp_path):
    """It stopped `make extract` with "'utf-8' codec can't encode character '\\udce9' in position 3: surrogates not
    allowed", naming nothing; its name would also go into run.json, the reports and a submission's header."""
    data = write_class_folders(tmp_path / "shapes", per_class=2)
    (data / "circle").rename(data / os.fsdecode(b"caf\xe9"))
    with pytest.raises(DataError, match=re.escape(
            f"class folder caf\\xe9/ in {data} has a name that is not UTF-8 (bytes shown escaped); class names must "
            f"be UTF-8 (they go into the cache, plots, reports and submission header): rename it (e.g. to café/, its "
            f"bytes read as Latin-1).")):
        discover(data)
    # The same under DATA/train; an empty one is no class (a note), and a file so named is cached as before.
    (data / os.fsdecode(b"caf\xe9")).rename(data / "circle")
    (data / os.fsdecode(b"na\xefve")).mkdir()
    (data / "circle" / os.fsdecode(b"caf\xe9.png")).write_bytes((data / "circle" / "circle_00.png").read_bytes())
    found = discover(data)
    assert found.class_names == list(CLASSES) and os.fsdecode(b"circle/caf\xe9.png") in {i.relpath for i in found.items}
    assert len(found.fingerprint()) == 64
    shutil.move(data, tmp_path / "tt" / "train")
    write_class_folders(tmp_path / "tt" / "test", per_class=1)
    for split in ("train", "test"):
        (tmp_path / "tt" / split / "stripes").rename(tmp_path / "tt" / split / os.fsdecode(b"str\xefpes"))
    with pytest.raises(DataError, match=r"^class folder str\\xefpes/ in .*train has a name that is not UTF-8"):
        discover(tmp_path / "tt")


# 7. one image under two ids


def test_an_image_listed_with_and_without_its_extension_is_a_duplicated_id(tmp_path):
    """img00,cat and img00.jpg,dog passed the duplicate-id check: the summary counted the image twice and the cache
    kept it once, with the last label."""
    images, csv, lines = _kaggle_rows(tmp_path)
    first, second = (row.split(",")[0] for row in lines[1:3])
    csv.write_text("\n".join(lines + [f"{first}.jpg,square"]) + "\n")
    with pytest.raises(DataError, match=re.escape(
            f"1 image appears more than once in labels.csv under different ids: {first} (line 2) and {first}.jpg "
            f"(line {len(lines) + 1}) are both {first}.jpg. Keep one row per image.")):
        discover(images, labels=csv)
    csv.write_text("\n".join(lines[:1] + [f"{second}.jpg,square", f"{first}.jpg,circle"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match=re.escape(
            f"2 images appear more than once in labels.csv under different ids, e.g. {first}.jpg (line 3) and "
            f"{first} (line 4) are both {first}.jpg.")):
        discover(images, labels=csv)


# 8. labels.csv not saved as UTF-8


def test_a_latin1_labels_csv_names_its_line_and_says_to_save_it_as_utf8(tmp_path):
    """It got "not a readable CSV ('utf-8' codec can't decode byte 0xfc in position 10 ...); it needs a header line
    ... one comma-separated row per image", which the file had."""
    images, csv, lines = _kaggle_rows(tmp_path)
    first = lines[2].split(",")[0]
    (images / f"{first}.jpg").rename(images / "müller.jpg")
    lines[2] = lines[2].replace(first, "müller")
    csv.write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    row = lines[2].replace("ü", "\\xfc")
    with pytest.raises(DataError, match=re.escape(
            f"LABELS={csv} is not UTF-8: line 3 has byte 0xfc ({row}), probably Latin-1/Windows-1252 as spreadsheets "
            f"save CSV by default. Re-save it as UTF-8 (Excel: Save As \"CSV UTF-8\"), or convert it: "
            f"iconv -f cp1252 -t utf-8 labels.csv > labels-utf8.csv")):
        discover(images, labels=csv)
    csv.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))  # re-saved as Excel's CSV UTF-8 does
    assert "müller.jpg" in {it.relpath for it in discover(images, labels=csv).items}


def test_a_utf16_labels_file_is_read_with_a_note_and_one_without_its_mark_is_refused(tmp_path):
    """Excel's "Unicode Text" (UTF-16 with a byte-order mark, tab-separated) was told it is "not a readable CSV
    ('utf-8' codec can't decode byte 0xff ...) ... separated by tab like its header", which it was."""
    images, csv, lines = _kaggle_rows(tmp_path)
    first = lines[2].split(",")[0]
    (images / f"{first}.jpg").rename(images / "müller.jpg")
    lines[2] = lines[2].replace(first, "müller")
    csv.write_text("\n".join(lines) + "\n")
    want = {it.relpath: it.label for it in discover(images, labels=csv).items}
    text = "\r\n".join(line.replace(",", "\t") for line in lines) + "\r\n"
    for encoding in ("utf-16", "utf-16-be"):  # utf-16: little-endian with its mark, as Excel writes it
        csv.write_bytes(codecs.BOM_UTF16_BE * (encoding == "utf-16-be") + text.encode(encoding))
        found = discover(images, labels=csv)
        assert {it.relpath: it.label for it in found.items} == want
        assert found.notes == ["labels.csv is UTF-16 (as Excel's \"Unicode Text\" saves it), not UTF-8: read it as "
                               "UTF-16", "labels.csv is separated by tab, not commas (its header has no comma): "
                               "read it with tab, columns id, breed"]
    csv.write_bytes(text.encode("utf-16-le"))  # no mark: which byte order it is would be a guess
    with pytest.raises(DataError, match=re.escape(
            f"LABELS={csv} is not a UTF-8 text file: line 1 has NUL bytes (UTF-16 without a byte-order mark, UTF-32, "
            f"or not a CSV at all). Re-save it as UTF-8 (Excel: Save As \"CSV UTF-8\").")):
        discover(images, labels=csv)


# 9. how ids name their files


def test_an_id_without_extension_naming_two_files_is_refused_naming_both(tmp_path):
    """twin,circle with twin.jpg and twin.png cached twin.jpg as circle and skipped twin.png as "not in labels:
    labels.csv has no row for it", though the row named it."""
    images, csv, lines = _kaggle_rows(tmp_path)
    first, second = (row.split(",")[0] for row in lines[1:3])
    shutil.copy(images / f"{first}.jpg", images / f"{first}.png")
    with pytest.raises(DataError, match=re.escape(
            f"id {first} in labels.csv (line 2) names 2 files, {first}.jpg and {first}.png, as it has no extension. "
            f"Write it with the extension of the image it labels, and give the other file a row of its own or move "
            f"it out of DATA.")):
        discover(images, labels=csv)
    shutil.copy(images / f"{second}.jpg", images / f"{second}.jpeg")
    shutil.copy(images / f"{second}.jpg", images / f"{second}.webp")
    with pytest.raises(DataError, match=re.escape(
            f"2 ids in labels.csv name more than one file as they have no extension, e.g. {first} (line 2): "
            f"{first}.jpg and {first}.png. Write each with the extension of the image it labels, and give the other "
            f"files rows of their own or move them out of DATA.")):
        discover(images, labels=csv)
    (images / f"{second}.jpeg").unlink()
    (images / f"{second}.webp").unlink()
    # Written with their extensions, both images are labelled, each with its own row.
    csv.write_text("\n".join([lines[0], f"{first}.jpg,circle", f"{first}.png,square"] + lines[2:]) + "\n")
    found = discover(images, labels=csv)
    labelled = {it.relpath: found.class_names[it.label] for it in found.items}
    assert (labelled[f"{first}.jpg"], labelled[f"{first}.png"]) == ("circle", "square")
    assert found.skipped == []
    # An image beside a file that is not one (its metadata, x.json): the id names the image, as it always did.
    (images / f"{second}.json").write_text("{}")
    found = discover(images, labels=csv)
    assert [it.relpath for it in found.items if it.relpath.startswith(second)] == [f"{second}.jpg"]
    assert [(s.relpath, s.reason.split(":")[0]) for s in found.skipped] == [(f"{second}.json", "not in labels")]
    assert f"1 file in DATA is not in labels.csv (listed as skipped): {second}.json" in found.notes


def test_ids_spelled_otherwise_than_their_file_are_matched_with_a_note_when_that_is_one_file(tmp_path):
    """./a, sub\\b and c.jpg for c.JPG all got the generic "have no image in DATA ... Fix DATA= or remove those
    rows.", which named neither the file nor the difference."""
    images, csv, lines = _kaggle_rows(tmp_path)
    (a, _), (b, _), (c, _) = (row.split(",") for row in lines[1:4])
    want = {it.relpath: it.label for it in discover(images, labels=csv).items}
    (images / "sub").mkdir()
    (images / f"{b}.jpg").rename(images / "sub" / f"{b}.jpg")
    (images / f"{c}.jpg").rename(images / f"{c}.JPG")
    respelled = [f"./{lines[1]}", f"sub\\{lines[2]}", lines[3].replace(",", ".jpg,", 1)]
    csv.write_text("\n".join(lines[:1] + respelled + lines[4:]) + "\n")
    found = discover(images, labels=csv)
    want[f"sub/{b}.jpg"], want[f"{c}.JPG"] = want.pop(f"{b}.jpg"), want.pop(f"{c}.jpg")
    assert {it.relpath: it.label for it in found.items} == want
    assert found.skipped == []
    assert found.notes == [f"3 ids in labels.csv name their images in another spelling (a leading ./, \\ for /, or "
                           f"the extension's case) and were matched to them, e.g. ./{a} is {a}.jpg"]
    # Still one row per image: ./a and a are two ids for one image.
    csv.write_text("\n".join(lines[:1] + respelled + lines[4:] + [lines[1]]) + "\n")
    with pytest.raises(DataError, match=re.escape(f"under different ids: ./{a} (line 2) and {a} (line 8) are both "
                                                  f"{a}.jpg. Keep one row per image.")):
        discover(images, labels=csv)
    # Backslashes read as / do not lead out of DATA.
    csv.write_text("\n".join(lines + ["..\\k\\labels.csv,circle"]) + "\n")
    with pytest.raises(DataError, match=r"^id '\.\.\\\\k\\\\labels\.csv' in labels\.csv resolves outside DATA="):
        discover(images, labels=csv)
    # Never a guess between two files: an extension whose case matches two of them is an error naming both.
    csv.write_text("\n".join(lines[:1] + respelled + lines[4:]) + "\n")
    shutil.copy(images / f"{c}.JPG", images / f"{c}.Jpg")
    with pytest.raises(DataError, match=re.escape(
            f"1 id in labels.csv has no image in DATA={images}: {c}.jpg (line 4). {c}.jpg differs only in its "
            f"extension's case from 2 files, {c}.JPG, {c}.Jpg: write it as the exact name of the image it labels.")):
        discover(images, labels=csv)


def test_ids_that_start_with_the_name_of_data_itself_say_to_remove_it(tmp_path):
    """train/<id> with DATA=.../train (a CSV written for the parent folder) got "Fix DATA= or remove those rows."."""
    images, csv, lines = _kaggle_rows(tmp_path)
    first = lines[1].split(",")[0]
    csv.write_text("\n".join(lines[:1] + [f"train/{row}" for row in lines[1:]]) + "\n")
    with pytest.raises(DataError, match=re.escape(
            f"They start with train/, the name of DATA itself (train/{first} is {first}.jpg in DATA): remove that "
            f"train/ from the ids in labels.csv.")):
        discover(images, labels=csv)
    csv.write_text("\n".join(lines[:2] + [f"train/{row}" for row in lines[2:4]] + lines[4:] + ["nowhere,circle"]))
    with pytest.raises(DataError, match=re.escape(
            f"2 of them start with train/, the name of DATA itself (train/{lines[2].split(',')[0]} is "
            f"{lines[2].split(',')[0]}.jpg in DATA): remove that train/ from the ids in labels.csv, and fix DATA= or "
            f"remove the other rows.")):
        discover(images, labels=csv)


def test_one_missing_id_is_told_in_the_singular_all_the_way(tmp_path):
    """"1 id ... has no image" went on with "They are in ..." and "They start with ... the ids"."""
    images, csv, lines = _kaggle_rows(tmp_path)
    first = lines[1].split(",")[0]
    (images / "extra").mkdir()
    (images / f"{first}.jpg").rename(images / "extra" / f"{first}.jpg")
    with pytest.raises(DataError, match=re.escape(
            f"1 id in labels.csv has no image in DATA={images}: {first} (line 2). It is in {images / 'extra'}: "
            f"pass DATA={images / 'extra'}.")):
        discover(images, labels=csv)
    (images / "extra" / f"{first}.jpg").rename(images / f"{first}.jpg")
    csv.write_text("\n".join(lines[:1] + [f"train/{lines[1]}"] + lines[2:]) + "\n")
    with pytest.raises(DataError, match=re.escape(
            f"It starts with train/, the name of DATA itself (train/{first} is {first}.jpg in DATA): remove that "
            f"train/ from the id in labels.csv.")):
        discover(images, labels=csv)
